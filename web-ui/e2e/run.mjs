// End-to-end journey of the dashboard in real headless Chromium against the real proxy and
// a real mosquitto: sign in, add a broker, see it connect, see live messages (a QoS 1 one
// acked by the broker) and the rate rise, pause it, reload and stay signed in; no console
// errors, no request leaving the machine. Screenshots of every page at laptop and phone
// width go to target/ui-screenshots/.
//
// Usage: node e2e/run.mjs   (env MQTT_PROXY_BIN: the proxy binary, default
// ../target/debug/mqtt-proxy; CHROMIUM: default /usr/bin/chromium)
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const bin = process.env.MQTT_PROXY_BIN ?? path.join(root, 'target/debug/mqtt-proxy');
const shots = path.join(root, 'target/ui-screenshots');
const TOKEN = 'e2e-admin-token';
const STEP = 20_000;
mkdirSync(shots, { recursive: true });

const children = [];
const tmp = mkdtempSync(path.join(tmpdir(), 'mqtt-proxy-e2e-'));

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

function start(cmd, args, env = {}) {
  const c = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
  let log = '';
  c.stdout.on('data', (d) => (log += d));
  c.stderr.on('data', (d) => (log += d));
  children.push(c);
  c.log = () => log;
  return c;
}

async function waitPort(port, ms = STEP) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const ok = await new Promise((r) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.end();
        r(true);
      });
      s.on('error', () => r(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`port ${port} did not open within ${ms} ms`);
}

function cleanup() {
  for (const c of children) c.kill('SIGTERM');
  rmSync(tmp, { recursive: true, force: true });
}

async function main() {
  const [brokerPort, mqttPort, httpPort] = [await freePort(), await freePort(), await freePort()];
  const conf = path.join(tmp, 'mosquitto.conf');
  writeFileSync(
    conf,
    `listener ${brokerPort} 127.0.0.1\nallow_anonymous true\npersistence false\n` +
      (process.getuid?.() === 0 ? 'user root\n' : ''),
  );
  const broker = start('mosquitto', ['-c', conf]);
  await waitPort(brokerPort);
  const proxy = start(bin, [], {
    MQTT_PROXY_MQTT_LISTEN: `127.0.0.1:${mqttPort}`,
    MQTT_PROXY_HTTP_LISTEN: `127.0.0.1:${httpPort}`,
    MQTT_PROXY_DATA_DIR: path.join(tmp, 'data'),
    MQTT_PROXY_ADMIN_TOKEN: TOKEN,
    MQTT_PROXY_SECRET: 'e2e-secret-0123456789abcdef',
    // The test devices have no users file entry: anonymous devices are an explicit opt-in.
    MQTT_PROXY_ALLOW_ANONYMOUS: 'true',
  });
  await waitPort(httpPort);
  await waitPort(mqttPort);
  // A device that stays connected, so the proxy opens a session to the broker once added.
  start('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(mqttPort), '-i', 'e2e-device', '-t', 'cmd/#']);
  const base = `http://127.0.0.1:${httpPort}`;

  // A fresh, empty profile per run.
  const context = await chromium.launchPersistentContext(path.join(tmp, 'chromium'), {
    viewport: { width: 1280, height: 800 },
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const errors = [];
  const external = [];
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(STEP);
  page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (!['127.0.0.1', 'localhost'].includes(u.hostname) && u.protocol !== 'data:') external.push(r.url());
  });
  const step = (name) => console.log(`e2e: ${name}`);

  try {
    step('sign in');
    await page.goto(base);
    await page.screenshot({ path: path.join(shots, 'login-laptop.png') });
    await page.getByLabel('Admin token').fill(TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Overview' }).waitFor();

    step('add a broker');
    await page.getByRole('link', { name: 'Brokers' }).click();
    await page.getByRole('button', { name: 'Add broker' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.getByLabel('Name', { exact: true }).fill('e2e broker');
    await dialog.getByLabel('Address', { exact: true }).fill('127.0.0.1');
    // Client validation first: a bad port is named next to its field, nothing is sent.
    await dialog.getByLabel('Port', { exact: true }).fill('0');
    await dialog.getByRole('button', { name: 'Save' }).click();
    await dialog.getByText('must be 1-65535').waitFor();
    await dialog.getByLabel('Port', { exact: true }).fill(String(brokerPort));
    await dialog.getByRole('button', { name: 'Save' }).click();
    await dialog.waitFor({ state: 'hidden' });
    const card = page.getByRole('article', { name: 'Broker e2e broker' });
    step('see it connected');
    await card.getByText('connected', { exact: true }).waitFor();

    step('publish and see the message live');
    const pub = start('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(mqttPort), '-i', 'e2e-publisher', '-t', 'e2e/hello', '-l', '-q', '1']);
    const feed = setInterval(() => pub.stdin.write('{"hello":"world","n":1}\n'), 100);
    try {
      await page.getByRole('link', { name: 'Live messages' }).click();
      const cell = page.getByRole('cell', { name: 'e2e/hello' }).first();
      await cell.waitFor();
      await cell.click();
      await page.getByLabel('Payload').getByText('"hello": "world"').waitFor();
      step('see the broker acknowledge a QoS 1 message');
      // The outcome follows the message: queued, then written, then acked by mosquitto.
      await page.getByRole('region', { name: 'Message details' }).getByText('e2e broker: acked').waitFor();
      await page
        .getByRole('row')
        .filter({ hasText: 'e2e/hello' })
        .filter({ hasText: 'e2e broker: acked' })
        .first()
        .waitFor();
      await page.screenshot({ path: path.join(shots, 'live-laptop.png') });

      step('see the rate rise');
      await page.getByRole('link', { name: 'Overview' }).click();
      await page.waitForFunction(() => {
        const el = document.querySelector('[aria-label="Messages/s in"]');
        return el && parseFloat(el.textContent ?? '0') > 0;
      });
      // Let the charts collect a few seconds of points.
      await page.waitForTimeout(3000);
      await page.screenshot({ path: path.join(shots, 'overview-laptop.png') });
      await page.getByRole('link', { name: 'Brokers' }).click();
      await page.waitForFunction(() => {
        const card = document.querySelector('[aria-label="Broker e2e broker"]');
        const m = card?.textContent?.match(/msg\/s \(10 s\)([\d.]+)/);
        return m && parseFloat(m[1]) > 0;
      });
      await page.screenshot({ path: path.join(shots, 'brokers-laptop.png') });
    } finally {
      clearInterval(feed);
      pub.stdin.end();
    }

    step('devices');
    await page.getByRole('link', { name: 'Devices' }).click();
    await page.getByRole('cell', { name: 'e2e-device' }).waitFor();
    await page.screenshot({ path: path.join(shots, 'devices-laptop.png') });

    step('pause the broker');
    await page.getByRole('link', { name: 'Brokers' }).click();
    await card.getByRole('button', { name: 'Pause' }).click();
    await card.getByText('paused', { exact: true }).waitFor();
    await card.getByRole('button', { name: 'Resume' }).waitFor();

    step('reload and stay signed in');
    await page.reload();
    await page.getByRole('heading', { name: 'Brokers' }).waitFor();
    if (await page.getByLabel('Admin token').count()) throw new Error('signed out by a reload');
    await card.getByText('paused', { exact: true }).waitFor();
    await card.getByRole('button', { name: 'Resume' }).click();
    await card.getByText('connected', { exact: true }).waitFor();

    step('phone width');
    await page.setViewportSize({ width: 390, height: 844 });
    // Traffic again, so the phone screenshots show live figures.
    const pub2 = start('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(mqttPort), '-i', 'e2e-publisher-2', '-t', 'sensors/kitchen/temp', '-l', '-q', '0']);
    const feed2 = setInterval(() => pub2.stdin.write('21.5\n'), 50);
    await page.waitForTimeout(4000);
    for (const [name, link] of [
      ['overview', 'Overview'],
      ['brokers', 'Brokers'],
      ['live', 'Live messages'],
      ['devices', 'Devices'],
    ]) {
      await page.getByRole('button', { name: 'Menu' }).click();
      await page.getByRole('link', { name: link }).click();
      await page.getByRole('heading', { name: link }).waitFor();
      await page.waitForTimeout(300);
      await page.screenshot({ path: path.join(shots, `${name}-phone.png`), fullPage: true });
    }
    clearInterval(feed2);
    pub2.stdin.end();

    step('file mode is read-only');
    const filePort = await freePort();
    const fileMqtt = await freePort();
    const brokersFile = path.join(tmp, 'brokers.json');
    writeFileSync(brokersFile, JSON.stringify({ brokers: [{ id: 'from-file', address: '127.0.0.1', port: brokerPort }] }));
    start(bin, ['--brokers-file', brokersFile], {
      MQTT_PROXY_MQTT_LISTEN: `127.0.0.1:${fileMqtt}`,
      MQTT_PROXY_HTTP_LISTEN: `127.0.0.1:${filePort}`,
      MQTT_PROXY_DATA_DIR: path.join(tmp, 'data-file'),
      MQTT_PROXY_ADMIN_TOKEN: TOKEN,
      MQTT_PROXY_ALLOW_ANONYMOUS: 'true',
    });
    await waitPort(filePort);
    await page.setViewportSize({ width: 1280, height: 800 });
    await page.goto(`http://127.0.0.1:${filePort}/brokers`);
    await page.getByLabel('Admin token').fill(TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByText('Brokers come from the file given with --brokers-file', { exact: false }).waitFor();
    await page.getByRole('article', { name: 'Broker from-file' }).waitFor();
    if (await page.getByRole('button', { name: 'Add broker' }).count()) throw new Error('file mode offers "Add broker"');
    if (await page.getByRole('button', { name: 'Pause' }).count()) throw new Error('file mode offers "Pause"');
    await page.screenshot({ path: path.join(shots, 'brokers-file-mode-laptop.png') });

    if (errors.length) throw new Error(`console errors:\n${errors.join('\n')}`);
    if (external.length) throw new Error(`requests leaving the machine:\n${external.join('\n')}`);
    console.log(`e2e: passed; screenshots in ${shots}`);
  } catch (e) {
    await page.screenshot({ path: path.join(shots, 'failure.png') }).catch(() => {});
    console.error(`e2e: FAILED: ${e.message}`);
    console.error(`--- proxy log (tail) ---\n${proxy.log().slice(-3000)}`);
    console.error(`--- broker log (tail) ---\n${broker.log().slice(-1000)}`);
    if (errors.length) console.error(`console errors:\n${errors.join('\n')}`);
    process.exitCode = 1;
  } finally {
    await context.close();
  }
}

main()
  .catch((e) => {
    console.error(`e2e: FAILED: ${e.stack ?? e}`);
    process.exitCode = 1;
  })
  .finally(cleanup);
