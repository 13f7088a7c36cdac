/**
 * The safetensors container (https://huggingface.co/docs/safetensors), pure byte math, no file I/O:
 *
 *   [8 bytes: u64 little-endian header length N][N bytes: JSON header][data buffer]
 *
 * The header maps each tensor name to `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to
 * the start of the data buffer, row-major little-endian data) and may hold `__metadata__`, a
 * string -> string map. Every tensor is read into a Float32Array: F32 as is; F16, BF16 and F64 converted;
 * integer and bool tensors (PyTorch's `num_batches_tracked` is I64) converted too, exact up to 2^24.
 * Writing produces F32 only, header padded with spaces to a multiple of 8 bytes as the reference
 * implementation does, so that the data buffer stays aligned.
 *
 * Every error names the source (a file path, for a user) and what was expected vs found.
 */
import { shapeStr } from './shape.ts';

export type SafetensorsDtype = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

const DTYPE_BYTES: Readonly<Record<SafetensorsDtype, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};
export const SAFETENSORS_DTYPES = Object.keys(DTYPE_BYTES) as SafetensorsDtype[];

/** One tensor's header entry; `begin`/`end` are absolute byte offsets into the whole file. */
export interface SafetensorsEntry {
  readonly name: string;
  readonly dtype: SafetensorsDtype;
  readonly shape: number[];
  readonly begin: number;
  readonly end: number;
}

export interface SafetensorsHeader {
  /** Entries in header order. */
  readonly entries: Map<string, SafetensorsEntry>;
  /** `__metadata__`, empty when absent. */
  readonly metadata: Record<string, string>;
  /** Byte offset of the data buffer in the file (8 + N). */
  readonly dataStart: number;
}

export interface DecodedTensor {
  dtype: SafetensorsDtype;
  shape: number[];
  data: Float32Array;
}

export interface TensorToEncode {
  shape: readonly number[];
  data: Float32Array;
}

const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function elementCount(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function isDtype(v: unknown): v is SafetensorsDtype {
  return typeof v === 'string' && Object.hasOwn(DTYPE_BYTES, v);
}

function isShape(v: unknown): v is number[] {
  return Array.isArray(v) && v.every((d) => Number.isSafeInteger(d) && d >= 0);
}

/** Parses and validates the header; tensor data is not read. */
export function readSafetensorsHeader(bytes: Uint8Array, source: string): SafetensorsHeader {
  if (bytes.length < 8) {
    throw new Error(`${source}: not a safetensors file: ${bytes.length} bytes, expected at least 8 (the header length)`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = view.getBigUint64(0, true);
  const available = bytes.length - 8;
  if (n > BigInt(available)) {
    throw new Error(
      `${source}: safetensors header length ${n} exceeds the ${available} bytes after the length prefix (truncated file, or not safetensors)`,
    );
  }
  const headerLength = Number(n);
  const dataStart = 8 + headerLength;
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, dataStart)));
  } catch (err) {
    throw new Error(`${source}: safetensors header (${headerLength} bytes) is not valid UTF-8 JSON: ${(err as Error).message}`);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) {
    throw new Error(
      `${source}: safetensors header must be a JSON object, found ${Array.isArray(header) ? 'an array' : header === null ? 'null' : typeof header}`,
    );
  }
  const dataLength = bytes.length - dataStart;
  const entries = new Map<string, SafetensorsEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      metadata = checkMetadata(raw, source);
      continue;
    }
    const what = `${source}: tensor '${name}'`;
    if (raw === null || typeof raw !== 'object') throw new Error(`${what}: header entry must be an object, found ${JSON.stringify(raw)}`);
    const { dtype, shape, data_offsets: offsets } = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (!isDtype(dtype)) {
      throw new Error(`${what} has unsupported dtype ${JSON.stringify(dtype)}, expected one of ${SAFETENSORS_DTYPES.join(', ')}`);
    }
    if (!isShape(shape)) throw new Error(`${what}: shape must be an array of non-negative integers, found ${JSON.stringify(shape)}`);
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
      offsets[0] > offsets[1]
    ) {
      throw new Error(`${what}: data_offsets must be [begin, end] with 0 <= begin <= end, found ${JSON.stringify(offsets)}`);
    }
    const [b, e] = offsets as [number, number];
    if (e > dataLength) {
      throw new Error(`${what}: data_offsets [${b}, ${e}] exceed the data buffer of ${dataLength} bytes (truncated file?)`);
    }
    const expected = elementCount(shape) * DTYPE_BYTES[dtype];
    if (e - b !== expected) {
      throw new Error(
        `${what}: data_offsets [${b}, ${e}] span ${e - b} bytes, expected ${expected} for dtype ${dtype} and shape ${shapeStr(shape)}`,
      );
    }
    entries.set(name, { name, dtype, shape, begin: dataStart + b, end: dataStart + e });
  }
  return { entries, metadata, dataStart };
}

function checkMetadata(raw: unknown, source: string): Record<string, string> {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new Error(`${source}: safetensors __metadata__ must be an object of strings, found ${JSON.stringify(raw)}`);
  }
  for (const [k, v] of Object.entries(raw)) {
    if (typeof v !== 'string') throw new Error(`${source}: safetensors __metadata__ value '${k}' must be a string, found ${typeof v}`);
  }
  return raw as Record<string, string>;
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** Reads one entry's data (see `readSafetensorsHeader`) as float32. */
export function decodeTensorData(bytes: Uint8Array, entry: SafetensorsEntry): Float32Array {
  const n = elementCount(entry.shape);
  if (entry.dtype === 'F32' && HOST_LITTLE_ENDIAN) {
    // Copy into a fresh, aligned buffer: the file's data need not be 4-byte aligned (and Node's
    // Buffer.slice would not copy at all).
    const copy = new Uint8Array(entry.end - entry.begin);
    copy.set(bytes.subarray(entry.begin, entry.end));
    return new Float32Array(copy.buffer);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset + entry.begin, entry.end - entry.begin);
  const out = new Float32Array(n);
  const size = DTYPE_BYTES[entry.dtype];
  const read: (offset: number) => number = {
    F64: (o: number) => view.getFloat64(o, true),
    F32: (o: number) => view.getFloat32(o, true),
    F16: (o: number) => halfToFloat(view.getUint16(o, true)),
    BF16: (o: number) => {
      // bfloat16 is the top half of a float32.
      scratch.setUint32(0, view.getUint16(o, true) << 16, true);
      return scratch.getFloat32(0, true);
    },
    I64: (o: number) => Number(view.getBigInt64(o, true)),
    I32: (o: number) => view.getInt32(o, true),
    I16: (o: number) => view.getInt16(o, true),
    I8: (o: number) => view.getInt8(o),
    U8: (o: number) => view.getUint8(o),
    BOOL: (o: number) => (view.getUint8(o) ? 1 : 0),
  }[entry.dtype];
  for (let i = 0; i < n; i++) out[i] = read(i * size);
  return out;
}
const scratch = new DataView(new ArrayBuffer(4));

/** Decodes every tensor of a safetensors buffer into float32. `source` names the buffer in errors. */
export function decodeSafetensors(bytes: Uint8Array, source: string): Map<string, DecodedTensor> {
  const header = readSafetensorsHeader(bytes, source);
  const out = new Map<string, DecodedTensor>();
  for (const e of header.entries.values()) out.set(e.name, { dtype: e.dtype, shape: e.shape, data: decodeTensorData(bytes, e) });
  return out;
}

/**
 * The 8-byte length prefix plus the JSON header of an all-F32 file whose tensors follow in the given
 * order; the caller appends each tensor's little-endian bytes (`float32Bytes`) in that order. Lets a
 * writer stream large files instead of building them in memory.
 */
export function encodeSafetensorsHeader(
  tensors: ReadonlyMap<string, { shape: readonly number[] }>,
  metadata?: Readonly<Record<string, string>>,
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new Error(`safetensors: __metadata__ value '${k}' must be a string, found ${typeof v}`);
    }
    header['__metadata__'] = metadata;
  }
  let offset = 0;
  for (const [name, t] of tensors) {
    if (name === '__metadata__') throw new Error(`safetensors: '__metadata__' is reserved and cannot name a tensor`);
    if (!isShape(t.shape)) throw new Error(`safetensors: tensor '${name}' has invalid shape ${JSON.stringify(t.shape)}`);
    const size = elementCount(t.shape) * 4;
    header[name] = { dtype: 'F32', shape: [...t.shape], data_offsets: [offset, offset + size] };
    offset += size;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded).fill(0x20, 8 + json.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  return out;
}

/** Little-endian bytes of a float32 array (a view, no copy, on little-endian hosts). */
export function float32Bytes(data: Float32Array): Uint8Array {
  if (HOST_LITTLE_ENDIAN) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const out = new Uint8Array(data.length * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < data.length; i++) view.setFloat32(i * 4, data[i]!, true);
  return out;
}

/** Throws unless `data` holds exactly shape-many values (call before streaming a tensor after the header). */
export function checkTensorToEncode(name: string, t: TensorToEncode): void {
  const n = elementCount(t.shape);
  if (t.data.length !== n) {
    throw new Error(`safetensors: tensor '${name}' has ${t.data.length} values, expected ${n} for shape ${shapeStr(t.shape)}`);
  }
}

/** Encodes float32 tensors (in map order) and optional string metadata as one safetensors buffer. */
export function encodeSafetensors(tensors: ReadonlyMap<string, TensorToEncode>, metadata?: Readonly<Record<string, string>>): Uint8Array {
  for (const [name, t] of tensors) checkTensorToEncode(name, t);
  const header = encodeSafetensorsHeader(tensors, metadata);
  let total = header.length;
  for (const t of tensors.values()) total += t.data.byteLength;
  const out = new Uint8Array(total);
  out.set(header, 0);
  let at = header.length;
  for (const t of tensors.values()) {
    out.set(float32Bytes(t.data), at);
    at += t.data.byteLength;
  }
  return out;
}
