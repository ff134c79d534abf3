import { defineConfig } from 'vitest/config';
import react from '@vitejs/plugin-react';

// `npm run dev` proxies the API to a proxy on :3000; the production build is embedded in
// the mqtt-proxy binary (proxy/build.rs), served from the same origin.
export default defineConfig({
  plugins: [react()],
  build: { outDir: 'dist', assetsDir: 'assets', sourcemap: false, chunkSizeWarningLimit: 1500 },
  server: {
    proxy: {
      '/api': { target: 'http://127.0.0.1:3000', ws: true },
      '/readyz': 'http://127.0.0.1:3000',
    },
  },
  test: { include: ['src/**/*.test.ts'] },
});
