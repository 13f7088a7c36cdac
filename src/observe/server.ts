/**
 * `/metrics` over HTTP for Prometheus, on 127.0.0.1:9464 by default (loopback: a training box is not
 * exposed by accident). Port 0 turns it off.
 */
import { createServer, type Server } from 'node:http';
import type { Registry } from 'prom-client';

export interface MetricsServer {
  url: string | null;
  close(): Promise<void>;
}

export async function serveMetrics(registry: Registry, opts: { host?: string; port?: number } = {}): Promise<MetricsServer> {
  const host = opts.host ?? '127.0.0.1';
  const port = opts.port ?? 9464;
  if (port === 0) return { url: null, close: async () => {} };
  const server: Server = createServer((req, res) => {
    if (req.url?.split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics\n');
      return;
    }
    registry.metrics().then(
      (text) => {
        res.writeHead(200, { 'content-type': registry.contentType }).end(text);
      },
      (err: Error) => {
        res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics: ${err.message}\n`);
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        new Error(
          err.code === 'EADDRINUSE'
            ? `metrics: ${host}:${port} is in use; pick another with --metrics-port (0 = off)`
            : `metrics: ${err.message}`,
        ),
      ),
    );
    server.listen(port, host, () => resolve());
  });
  server.unref();
  return {
    url: `http://${host}:${port}/metrics`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
