/**
 * The metrics endpoint of an entry point: `--metrics-host` / `--metrics-port` (default
 * 127.0.0.1:9464, port 0 = off), one registry per process.
 */
import { createMetrics, type SpclMetrics } from './metrics.ts';
import { serveMetrics, type MetricsServer } from './server.ts';

export const METRICS_OPTIONS = {
  'metrics-host': { type: 'string', default: '127.0.0.1' },
  'metrics-port': { type: 'string', default: '9464' },
} as const;

export const METRICS_USAGE = `  --metrics-host H    Prometheus endpoint host (default 127.0.0.1)
  --metrics-port P    Prometheus endpoint port (default 9464, 0 = off); serves /metrics`;

export async function startMetrics(
  values: { 'metrics-host': string; 'metrics-port': string },
  log: (l: string) => void,
): Promise<{ metrics: SpclMetrics; server: MetricsServer }> {
  const port = Number(values['metrics-port']);
  if (!Number.isInteger(port) || port < 0 || port > 65535)
    throw new Error(`--metrics-port must be an integer in 0..65535, got '${values['metrics-port']}'`);
  const metrics = createMetrics();
  const server = await serveMetrics(metrics.registry, { host: values['metrics-host'], port });
  if (server.url) log(`metrics: ${server.url}`);
  return { metrics, server };
}
