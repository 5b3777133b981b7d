import * as ort from 'onnxruntime-node';
import { fromFloat16, toFloat16 } from './float16.ts';

/**
 * Float tensors at a graph's boundary in the element type the graph declares: the engine computes in
 * float32, and a float16 graph's inputs and outputs are converted here (src/engine/float16.ts). Other
 * types (int64 ids, int32 timesteps) pass through the callers untouched.
 */

/** The element type a graph declares for one of its inputs (e.g. the UNet's timestep may be int64 or float). */
export function inputType(session: ort.InferenceSession, name: string): ort.Tensor.Type {
  const meta = session.inputMetadata.find((v) => v.name === name);
  return meta?.isTensor ? meta.type : 'float32';
}

function outputType(session: ort.InferenceSession, name: string): ort.Tensor.Type {
  const meta = session.outputMetadata.find((v) => v.name === name);
  return meta?.isTensor ? meta.type : 'float32';
}

/** A tensor for a float input of `session`, converting float32 values when the graph takes float16. */
export function floatInput(
  session: ort.InferenceSession,
  name: string,
  values: Float32Array,
  dims: readonly number[],
): ort.Tensor {
  return inputType(session, name) === 'float16'
    ? new ort.Tensor('float16', toFloat16(values), dims)
    : new ort.Tensor('float32', values, dims);
}

/**
 * The float32 values of a float output (the tensor's own data when it is float32, no copy). `from`/`to`
 * select a range of elements, so a float16 output converts only what is read.
 */
export function floatOutput(value: ort.OnnxValue, from = 0, to?: number): Float32Array {
  const tensor = value as ort.Tensor;
  if (tensor.type === 'float16') return fromFloat16((tensor.data as Uint16Array).subarray(from, to));
  if (tensor.type !== 'float32') throw new TypeError(`expected a float tensor, got ${tensor.type}`);
  const data = tensor.data as Float32Array;
  return from === 0 && to === undefined ? data : data.subarray(from, to);
}

/**
 * A reusable float input for a loop: write float32 values into `values`, call `sync()`, run. With a float32
 * graph `values` is the tensor's own buffer and `sync` does nothing.
 */
export interface FloatFeed {
  values: Float32Array;
  tensor: ort.Tensor;
  sync(): void;
}

export function floatFeed(session: ort.InferenceSession, name: string, dims: readonly number[]): FloatFeed {
  const values = new Float32Array(dims.reduce((a, b) => a * b, 1));
  if (inputType(session, name) !== 'float16') {
    return { values, tensor: new ort.Tensor('float32', values, dims), sync: () => {} };
  }
  const bits = new Uint16Array(values.length);
  return { values, tensor: new ort.Tensor('float16', bits, dims), sync: () => toFloat16(values, bits) };
}

/** A pre-allocated float output for a loop: pass `tensor` in the fetches, then `read()` after each run. */
export interface FloatFetch {
  tensor: ort.Tensor;
  read(): Float32Array;
}

export function floatFetch(session: ort.InferenceSession, name: string, dims: readonly number[]): FloatFetch {
  const values = new Float32Array(dims.reduce((a, b) => a * b, 1));
  if (outputType(session, name) !== 'float16') {
    return { tensor: new ort.Tensor('float32', values, dims), read: () => values };
  }
  const bits = new Uint16Array(values.length);
  return { tensor: new ort.Tensor('float16', bits, dims), read: () => fromFloat16(bits, values) };
}
