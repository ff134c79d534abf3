// MQTT topic filters (wildcards + and #) and the live view's topic tree.

/** Does `topic` match `filter` (MQTT 3.1.1 §4.7)? An empty filter matches everything. */
export function matches(filter: string, topic: string): boolean {
  if (filter === '' || filter === '#') return filter === '' || !topic.startsWith('$');
  const f = filter.split('/');
  const t = topic.split('/');
  if (topic.startsWith('$') && (f[0] === '+' || f[0] === '#')) return false;
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return i === f.length - 1;
    if (i >= t.length) return false;
    if (f[i] !== '+' && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}

/** A valid filter: `#` only last and alone in its level, `+` alone in its level. */
export function validFilter(filter: string): boolean {
  if (filter.length === 0 || filter.length > 65535 || filter.includes('\0')) return false;
  const levels = filter.split('/');
  return levels.every((l, i) => {
    if (l.includes('#')) return l === '#' && i === levels.length - 1;
    if (l.includes('+')) return l === '+';
    return true;
  });
}

export interface TreeNode {
  name: string;
  path: string;
  count: number;
  children: Map<string, TreeNode>;
}

export function emptyTree(): TreeNode {
  return { name: '', path: '', count: 0, children: new Map() };
}

/** Adds one message on `topic`; at most `maxNodes` nodes are kept (new branches are then not added). */
export function addTopic(root: TreeNode, topic: string, maxNodes = 2000): void {
  let node = root;
  root.count++;
  let total = countNodes(root);
  for (const level of topic.split('/')) {
    let child = node.children.get(level);
    if (!child) {
      if (total >= maxNodes) return;
      child = { name: level, path: node.path ? `${node.path}/${level}` : level, count: 0, children: new Map() };
      node.children.set(level, child);
      total++;
    }
    child.count++;
    node = child;
  }
}

export function countNodes(n: TreeNode): number {
  let c = 0;
  for (const ch of n.children.values()) c += 1 + countNodes(ch);
  return c;
}
