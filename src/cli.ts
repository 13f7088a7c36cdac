/**
 * The command line of an entry point: parse flags, `--help` prints the usage and exits 0, a bad flag
 * prints what is wrong plus the usage and exits 2 (`fail` does the same for checks after parsing).
 */
import { parseArgs, type ParseArgsOptionsConfig } from 'node:util';

export interface Cli<V> {
  values: V;
  /** Prints `<name>: <message>` and the usage, exits 2. */
  fail(message: string): never;
}

export function parseCli<const O extends ParseArgsOptionsConfig>(name: string, usage: string, options: O) {
  const fail = (message: string): never => {
    process.stderr.write(`${name}: ${message}\n\n${usage}\n`);
    process.exit(2);
  };
  const config = { options: { ...options, help: { type: 'boolean', short: 'h', default: false } } } as const;
  let values: ReturnType<typeof parseArgs<typeof config>>['values'];
  try {
    values = parseArgs(config).values;
  } catch (err) {
    return fail((err as Error).message);
  }
  if ((values as { help?: boolean }).help) {
    console.log(usage);
    process.exit(0);
  }
  return { values, fail };
}
