;; The gradient of ReLU on the wasm backend (src/ops/relu-grad-wasm.ts drives it), run on tfjs-wasm's own
;; memory: dy, x and out are float32 tensors of `n` elements in place. tfjs's gradient is three kernels,
;; mul(dy, cast(step(x), 'float32')), each a pass over the tensor; this is one pass with their arithmetic:
;;   out[i] = dy[i] * s,  s = x[i] if x[i] is NaN, else 1 if x[i] > 0, else 0
;; (a float32 multiply: dy * 0 keeps dy's sign and is NaN for an infinite dy, as the Multiply kernel's).
;; Four elements a step, then a scalar tail for n % 4. Offsets in bytes. The memory import is rewritten to an
;; unshared one for tfjs-wasm's one-thread build (`npm run build:wasm` assembles both).
;; `leaky` is LeakyReLU's gradient the same way: tfjs's where(greater(x, 0), dy, mul(dy, alpha)) (Greater,
;; Multiply, Select: three passes) as one, out[i] = dy[i] if x[i] > 0, else dy[i] * alpha (float32; a NaN x
;; is not > 0).
(module
  (import "env" "memory" (memory 1 65536 shared))

  (func (export "run") (param $dy i32) (param $x i32) (param $n i32) (param $out i32)
    (local $i i32) (local $quads i32) (local $v v128) (local $s v128) (local $f f32)
    (local.set $quads (i32.and (local.get $n) (i32.const -4)))
    (block $simd_done
      (loop $simd
        (br_if $simd_done (i32.ge_u (local.get $i) (local.get $quads)))
        (local.set $v (v128.load (i32.add (local.get $x) (i32.shl (local.get $i) (i32.const 2)))))
        ;; 1.0 where x > 0, 0.0 elsewhere; x itself where it is NaN
        (local.set $s (v128.and (f32x4.gt (local.get $v) (v128.const f32x4 0 0 0 0)) (v128.const f32x4 1 1 1 1)))
        (local.set $s (v128.bitselect (local.get $v) (local.get $s) (f32x4.ne (local.get $v) (local.get $v))))
        (v128.store (i32.add (local.get $out) (i32.shl (local.get $i) (i32.const 2)))
          (f32x4.mul (v128.load (i32.add (local.get $dy) (i32.shl (local.get $i) (i32.const 2)))) (local.get $s)))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br $simd)))
    (block $tail_done
      (loop $tail
        (br_if $tail_done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $f (f32.load (i32.add (local.get $x) (i32.shl (local.get $i) (i32.const 2)))))
        (if (f32.eq (local.get $f) (local.get $f))
          (then (local.set $f (select (f32.const 1) (f32.const 0) (f32.gt (local.get $f) (f32.const 0))))))
        (f32.store (i32.add (local.get $out) (i32.shl (local.get $i) (i32.const 2)))
          (f32.mul (f32.load (i32.add (local.get $dy) (i32.shl (local.get $i) (i32.const 2)))) (local.get $f)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $tail))))

  (func (export "leaky") (param $dy i32) (param $x i32) (param $n i32) (param $out i32) (param $alpha f32)
    (local $i i32) (local $quads i32) (local $d v128) (local $a v128) (local $g f32)
    (local.set $quads (i32.and (local.get $n) (i32.const -4)))
    (local.set $a (f32x4.splat (local.get $alpha)))
    (block $simd_done
      (loop $simd
        (br_if $simd_done (i32.ge_u (local.get $i) (local.get $quads)))
        (local.set $d (v128.load (i32.add (local.get $dy) (i32.shl (local.get $i) (i32.const 2)))))
        ;; dy where x > 0, dy * alpha elsewhere
        (v128.store (i32.add (local.get $out) (i32.shl (local.get $i) (i32.const 2)))
          (v128.bitselect (local.get $d) (f32x4.mul (local.get $d) (local.get $a))
            (f32x4.gt (v128.load (i32.add (local.get $x) (i32.shl (local.get $i) (i32.const 2)))) (v128.const f32x4 0 0 0 0))))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br $simd)))
    (block $tail_done
      (loop $tail
        (br_if $tail_done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $g (f32.load (i32.add (local.get $dy) (i32.shl (local.get $i) (i32.const 2)))))
        (f32.store (i32.add (local.get $out) (i32.shl (local.get $i) (i32.const 2)))
          (select (local.get $g) (f32.mul (local.get $g) (local.get $alpha))
            (f32.gt (f32.load (i32.add (local.get $x) (i32.shl (local.get $i) (i32.const 2)))) (f32.const 0))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $tail)))))
