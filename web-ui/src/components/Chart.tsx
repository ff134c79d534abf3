import { useEffect, useRef } from 'react';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import type { Columns } from '../lib/series';

const COLORS = ['#228be6', '#40c057', '#fa5252', '#fab005', '#7950f2', '#15aabf', '#e64980', '#82c91e'];

/** A uPlot time series chart that fills its container's width. */
export function Chart({ title, unit, columns }: { title: string; unit: string; columns: Columns }) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const key = columns.series.join('|');

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const opts: uPlot.Options = {
      width: el.clientWidth || 400,
      height: 220,
      series: [
        {},
        ...columns.series.map((s, i) => ({
          label: s,
          stroke: COLORS[i % COLORS.length],
          width: 2,
          dash: s.endsWith('p99') ? [6, 4] : undefined,
          value: (_u: uPlot, v: number | null) => (v == null ? '–' : `${v.toFixed(2)} ${unit}`),
        })),
      ],
      axes: [{}, { label: unit, size: 60 }],
      scales: { x: { time: true } },
      legend: { live: true },
    };
    const u = new uPlot(opts, columns.data as uPlot.AlignedData, el);
    plot.current = u;
    const ro = new ResizeObserver(() => u.setSize({ width: el.clientWidth, height: 220 }));
    ro.observe(el);
    return () => {
      ro.disconnect();
      u.destroy();
      plot.current = null;
    };
    // Recreated only when the set of series changes; data updates go through setData.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [key, unit]);

  useEffect(() => {
    plot.current?.setData(columns.data as uPlot.AlignedData);
  }, [columns]);

  const empty = !columns.data.slice(1).some((col) => col.some((v) => v != null));
  return (
    <figure style={{ margin: 0 }} aria-label={title}>
      <figcaption style={{ fontWeight: 600, marginBottom: 4 }}>
        {title}
        {empty && <span style={{ fontWeight: 400, color: 'var(--mantine-color-dimmed)' }}> · no data yet</span>}
      </figcaption>
      <div ref={box} style={{ width: '100%' }} />
    </figure>
  );
}
