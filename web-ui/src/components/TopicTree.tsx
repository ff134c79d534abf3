import { UnstyledButton, Text } from '@mantine/core';
import type { TreeNode } from '../lib/topic';

/** Topic levels with message counts; clicking one filters the list by `level/#`. */
export function TopicTree({ node, depth = 0, onPick }: { node: TreeNode; depth?: number; onPick(filter: string): void }) {
  const children = [...node.children.values()].sort((a, b) => a.name.localeCompare(b.name));
  return (
    <ul style={{ listStyle: 'none', paddingLeft: depth === 0 ? 0 : 14, margin: 0 }}>
      {children.map((c) => (
        <li key={c.path}>
          <UnstyledButton onClick={() => onPick(c.children.size ? `${c.path}/#` : c.path)}>
            <Text size="sm" span ff="monospace">
              {c.name || '(empty)'}
            </Text>{' '}
            <Text size="xs" c="dimmed" span>
              {c.count}
            </Text>
          </UnstyledButton>
          {c.children.size > 0 && depth < 8 && <TopicTree node={c} depth={depth + 1} onPick={onPick} />}
        </li>
      ))}
    </ul>
  );
}
