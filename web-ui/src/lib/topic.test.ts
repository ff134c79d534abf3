import { describe, expect, it } from 'vitest';
import { addTopic, emptyTree, matches } from './topic';
import { preview } from './payload';

describe('MQTT filter matching', () => {
  it.each([
    ['a/+/c', 'a/b/c', true],
    ['a/+/c', 'a/b/d', false],
    ['a/#', 'a', true],
    ['a/#', 'a/b/c', true],
    ['#', '$SYS/x', false],
    ['+/x', '$SYS/x', false],
    ['a/b', 'a/b/c', false],
    ['', 'anything', true],
  ])('%s vs %s', (f, t, want) => expect(matches(f, t)).toBe(want));
});

describe('topic tree', () => {
  it('counts messages per level and caps its size', () => {
    const root = emptyTree();
    addTopic(root, 'a/b');
    addTopic(root, 'a/c');
    expect(root.children.get('a')?.count).toBe(2);
    for (let i = 0; i < 50; i++) addTopic(root, `x/${i}`, 10);
    expect(root.children.get('x')?.children.size).toBeLessThan(10);
  });
});

describe('payload preview', () => {
  const enc = (s: string) => new TextEncoder().encode(s);
  it('pretty-prints JSON, shows text, falls back to hex', () => {
    expect(preview(enc('{"a":1}'))).toEqual({ kind: 'json', text: '{\n  "a": 1\n}' });
    expect(preview(enc('hello'))).toEqual({ kind: 'text', text: 'hello' });
    expect(preview(new Uint8Array([0, 255, 1]))).toEqual({ kind: 'hex', text: '00 ff 01' });
  });
});
