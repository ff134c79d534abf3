// Payload previews: JSON pretty-printed, else UTF-8 text, else hex.

export type PreviewKind = 'json' | 'text' | 'hex';

export function decodeBase64(b64: string): Uint8Array {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** Control characters other than tab, newline, CR, form feed: binary, not text. */
function hasControl(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 && c !== 9 && c !== 10 && c !== 12 && c !== 13) return true;
  }
  return false;
}

export function preview(bytes: Uint8Array): { kind: PreviewKind; text: string } {
  let text: string | null = null;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    text = null;
  }
  if (text !== null && !hasControl(text)) {
    const t = text.trim();
    if (t.startsWith('{') || t.startsWith('[')) {
      try {
        return { kind: 'json', text: JSON.stringify(JSON.parse(t), null, 2) };
      } catch {
        // truncated or not JSON: show as text
      }
    }
    return { kind: 'text', text };
  }
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0'));
  const lines: string[] = [];
  for (let i = 0; i < hex.length; i += 16) lines.push(hex.slice(i, i + 16).join(' '));
  return { kind: 'hex', text: lines.join('\n') };
}
