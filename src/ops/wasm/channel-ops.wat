;; Per-channel loops over NHWC tensors on the wasm backend (src/ops/channel-ops-wasm.ts drives them), run on
;; tfjs-wasm's own memory: x, out and the channel vectors are float32 tensors in place, `c` channels a row
;; (any c: four channels a step, then one at a time). Every operation is one float32 add, in the order of the
;; kernels they replace: the same bits.
;;   sum_rows:  acc[k] += x[r, k] over the rows in order (the Sum kernel over the leading axes: one float32
;;              accumulator per channel, row by row), in tiles of `tile` rows with four sums in a register
;;   add_rows:  out[r, k] = x[r, k] + b[k] (the Add kernel broadcasting a bias over the rows; out may be x)
;; Offsets in bytes. The memory import is rewritten to an unshared one for tfjs-wasm's one-thread build
;; (`npm run build:wasm` assembles both).
(module
  (import "env" "memory" (memory 1 65536 shared))

  (func (export "sum_rows") (param $x i32) (param $rows i32) (param $c i32) (param $tile i32) (param $acc i32)
    (local $t0 i32) (local $n i32) (local $k i32) (local $p i32) (local $i i32) (local $stride i32)
    (local $s v128) (local $f f32)
    (local.set $stride (i32.shl (local.get $c) (i32.const 2)))
    (block $done
      (loop $tiles
        (br_if $done (i32.ge_u (local.get $t0) (local.get $rows)))
        (local.set $n (i32.sub (local.get $rows) (local.get $t0)))
        (if (i32.gt_u (local.get $n) (local.get $tile)) (then (local.set $n (local.get $tile))))
        (local.set $k (i32.const 0))
        ;; four channels at a time
        (block $quads_done
          (loop $quads
            (br_if $quads_done (i32.gt_u (i32.add (local.get $k) (i32.const 4)) (local.get $c)))
            (local.set $s (v128.load (i32.add (local.get $acc) (i32.shl (local.get $k) (i32.const 2)))))
            (local.set $p (i32.add (local.get $x)
              (i32.shl (i32.add (i32.mul (local.get $t0) (local.get $c)) (local.get $k)) (i32.const 2))))
            (local.set $i (local.get $n))
            (loop $rows_
              (local.set $s (f32x4.add (local.get $s) (v128.load (local.get $p))))
              (local.set $p (i32.add (local.get $p) (local.get $stride)))
              (local.set $i (i32.sub (local.get $i) (i32.const 1)))
              (br_if $rows_ (local.get $i)))
            (v128.store (i32.add (local.get $acc) (i32.shl (local.get $k) (i32.const 2))) (local.get $s))
            (local.set $k (i32.add (local.get $k) (i32.const 4)))
            (br $quads)))
        ;; the channels left, one at a time
        (block $ones_done
          (loop $ones
            (br_if $ones_done (i32.ge_u (local.get $k) (local.get $c)))
            (local.set $f (f32.load (i32.add (local.get $acc) (i32.shl (local.get $k) (i32.const 2)))))
            (local.set $p (i32.add (local.get $x)
              (i32.shl (i32.add (i32.mul (local.get $t0) (local.get $c)) (local.get $k)) (i32.const 2))))
            (local.set $i (local.get $n))
            (loop $rows1
              (local.set $f (f32.add (local.get $f) (f32.load (local.get $p))))
              (local.set $p (i32.add (local.get $p) (local.get $stride)))
              (local.set $i (i32.sub (local.get $i) (i32.const 1)))
              (br_if $rows1 (local.get $i)))
            (f32.store (i32.add (local.get $acc) (i32.shl (local.get $k) (i32.const 2))) (local.get $f))
            (local.set $k (i32.add (local.get $k) (i32.const 1)))
            (br $ones)))
        (local.set $t0 (i32.add (local.get $t0) (local.get $n)))
        (br $tiles))))

  (func (export "add_rows") (param $x i32) (param $rows i32) (param $c i32) (param $b i32) (param $out i32)
    (local $r i32) (local $k i32) (local $stride i32) (local $quad_end i32)
    (local.set $stride (i32.shl (local.get $c) (i32.const 2)))
    (local.set $quad_end (i32.shl (i32.and (local.get $c) (i32.const -4)) (i32.const 2)))
    (block $done
      (loop $rows_
        (br_if $done (i32.ge_u (local.get $r) (local.get $rows)))
        (local.set $k (i32.const 0))
        (block $quads_done
          (loop $quads
            (br_if $quads_done (i32.ge_u (local.get $k) (local.get $quad_end)))
            (v128.store (i32.add (local.get $out) (local.get $k))
              (f32x4.add (v128.load (i32.add (local.get $x) (local.get $k))) (v128.load (i32.add (local.get $b) (local.get $k)))))
            (local.set $k (i32.add (local.get $k) (i32.const 16)))
            (br $quads)))
        (block $ones_done
          (loop $ones
            (br_if $ones_done (i32.ge_u (local.get $k) (local.get $stride)))
            (f32.store (i32.add (local.get $out) (local.get $k))
              (f32.add (f32.load (i32.add (local.get $x) (local.get $k))) (f32.load (i32.add (local.get $b) (local.get $k)))))
            (local.set $k (i32.add (local.get $k) (i32.const 4)))
            (br $ones)))
        (local.set $x (i32.add (local.get $x) (local.get $stride)))
        (local.set $out (i32.add (local.get $out) (local.get $stride)))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $rows_)))))
