/**
 * sharp's error text in one line: libvips' lines, each once ("Input buffer has corrupt header:" is followed
 * by the decoder's own lines), at most 200 characters. libvips keeps one error buffer per process, so when
 * two threads fail at once the detail may mix both; the reason and the rest of the message are ours.
 * Shared by the decode workers (read-worker.ts) and segment's image-file workers.
 */
export function libvipsText(err: unknown): string {
  const lines = [
    ...new Set(
      String((err as Error).message ?? err)
        .split('\n')
        .map((l) => l.trim())
        .filter(Boolean),
    ),
  ];
  const text = lines.join(' ');
  return text.length > 200 ? `${text.slice(0, 197)}...` : text;
}
