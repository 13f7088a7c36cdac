/**
 * A PNG that ends early, named by us before libvips sees it. libvips reports a truncated PNG in words
 * that depend on its thread timing ("vipspng: libpng read error" one time, "Warning treated as error due
 * to failOn setting" the next: one error buffer per process), so a fault log read by a person, and a test,
 * would say different things for the same file. Walking the chunk list is enough to know: every chunk is
 * length, type, data, CRC, and a whole PNG ends with its IEND chunk.
 */

const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/**
 * Why `bytes`, which start with the PNG signature, are not a whole PNG (null when they are, or when they
 * are no PNG at all: other formats are left to the decoder). Only the chunk structure is checked; damage
 * inside a chunk is the decoder's to find.
 */
export function pngTruncation(bytes: Uint8Array): string | null {
  if (bytes.length < SIGNATURE.length || SIGNATURE.some((b, i) => bytes[i] !== b)) return null;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = SIGNATURE.length;
  while (at + 8 <= bytes.length) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    const end = at + 12 + length;
    if (end > bytes.length) return `truncated: the file ends inside its ${type} chunk (${bytes.length} bytes, the chunk needs ${end})`;
    if (type === 'IEND') return null;
    at = end;
  }
  return `truncated: the file ends before its IEND chunk (${bytes.length} bytes)`;
}
