;; The gradient of the masked softmax cross-entropy on the wasm backend (src/ops/losses.ts's host op,
;; through src/ops/cross-entropy-wasm.ts), on tfjs-wasm's own memory: p [n, k] float32 (the softmax),
;; y [n] int32 labels, w [n] float32 weights (read only when $weighted), g [n, k] float32 out; offsets
;; in bytes. Row i with a label c in 0..k-1, s = w[i] * scale (float64; scale alone unweighted):
;;   g[i, j] = f32(f64(p[i, j]) * s), then g[i, c] = f32(f64(g[i, c]) - s)
;; rows with any other label: zeros. The JS loop's float64 operations per element (a multiply, then one
;; rounding on the store): the same bits. Four elements a step (two f64x2), the row's last k % 4 one at a
;; time. The memory import is rewritten to an unshared one for tfjs-wasm's one-thread build
;; (`npm run build:wasm` assembles both).
(module
  (import "env" "memory" (memory 1 65536 shared))

  (func (export "grad") (param $p i32) (param $y i32) (param $w i32) (param $weighted i32) (param $n i32)
    (param $k i32) (param $scale f64) (param $g i32)
    (local $i i32) (local $c i32) (local $row i32) (local $end i32) (local $quads i32) (local $at i32)
    (local $s f64) (local $sv v128) (local $v v128)
    (if (i32.or (i32.le_s (local.get $n) (i32.const 0)) (i32.le_s (local.get $k) (i32.const 0))) (then (return)))
    ;; bytes of a row, and of its whole steps of four
    (local.set $end (i32.shl (local.get $k) (i32.const 2)))
    (local.set $quads (i32.and (local.get $end) (i32.const -16)))
    (loop $rows
      (local.set $c (i32.load (i32.add (local.get $y) (i32.shl (local.get $i) (i32.const 2)))))
      (local.set $row (i32.mul (local.get $i) (local.get $end)))
      (local.set $at (i32.const 0))
      (if (i32.lt_u (local.get $c) (local.get $k))
        (then
          (local.set $s (local.get $scale))
          (if (local.get $weighted)
            (then (local.set $s (f64.mul
              (f64.promote_f32 (f32.load (i32.add (local.get $w) (i32.shl (local.get $i) (i32.const 2)))))
              (local.get $scale)))))
          (local.set $sv (f64x2.splat (local.get $s)))
          (block $quads_done
            (loop $quads_
              (br_if $quads_done (i32.ge_u (local.get $at) (local.get $quads)))
              (local.set $v (v128.load (i32.add (local.get $p) (i32.add (local.get $row) (local.get $at)))))
              (v128.store (i32.add (local.get $g) (i32.add (local.get $row) (local.get $at)))
                (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23
                  (f32x4.demote_f64x2_zero (f64x2.mul (f64x2.promote_low_f32x4 (local.get $v)) (local.get $sv)))
                  (f32x4.demote_f64x2_zero (f64x2.mul
                    (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $v) (local.get $v)))
                    (local.get $sv)))))
              (local.set $at (i32.add (local.get $at) (i32.const 16)))
              (br $quads_)))
          (block $tail_done
            (loop $tail
              (br_if $tail_done (i32.ge_u (local.get $at) (local.get $end)))
              (f32.store (i32.add (local.get $g) (i32.add (local.get $row) (local.get $at)))
                (f32.demote_f64 (f64.mul
                  (f64.promote_f32 (f32.load (i32.add (local.get $p) (i32.add (local.get $row) (local.get $at)))))
                  (local.get $s))))
              (local.set $at (i32.add (local.get $at) (i32.const 4)))
              (br $tail)))
          ;; the label's entry
          (local.set $at (i32.add (local.get $g) (i32.add (local.get $row) (i32.shl (local.get $c) (i32.const 2)))))
          (f32.store (local.get $at)
            (f32.demote_f64 (f64.sub (f64.promote_f32 (f32.load (local.get $at))) (local.get $s)))))
        (else
          (block $zeros_done
            (loop $zeros
              (br_if $zeros_done (i32.ge_u (local.get $at) (local.get $quads)))
              (v128.store (i32.add (local.get $g) (i32.add (local.get $row) (local.get $at))) (v128.const i32x4 0 0 0 0))
              (local.set $at (i32.add (local.get $at) (i32.const 16)))
              (br $zeros)))
          (block $zero_tail_done
            (loop $zero_tail
              (br_if $zero_tail_done (i32.ge_u (local.get $at) (local.get $end)))
              (f32.store (i32.add (local.get $g) (i32.add (local.get $row) (local.get $at))) (f32.const 0))
              (local.set $at (i32.add (local.get $at) (i32.const 4)))
              (br $zero_tail)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $rows (i32.lt_s (local.get $i) (local.get $n))))))
