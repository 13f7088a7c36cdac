;; The loops of trainable batch norm on the wasm backend (src/ops/model/batch-norm-wasm.ts drives them),
;; run on tfjs-wasm's own memory: x, dy and out are tensors in place (float32, NHWC, `c` channels a row,
;; `c` a multiple of 4), the per-channel terms f64 arrays of `c`. Every loop takes the rows in tiles of
;; `tile` rows and, inside a tile, four channels at a time (two f64x2 lanes), row by row: each channel's
;; sum adds its rows in order, the same float64 operations in the same order as the JS loops of
;; batch-norm-host.ts (f32 -> f64 promotion, separate multiply and add), and a result is rounded to float32
;; once, on the store. The same bits.
;;   sums:        acc[k] += x[r, k]
;;   squares:     acc[k] += (x[r, k] - mean[k])^2
;;   scale_shift: out[r, k] = x[r, k] * scale[k] + shift[k]
;;   grad_sums:   sdy[k] += dy[r, k]; sdx[k] += dy[r, k] * (x[r, k] - mean[k])
;;   input_grad:  out[r, k] = a[k] dy[r, k] + b[k] (x[r, k] - mean[k]) + e[k]
;; and of frozen batch norm, in float32 as tfjs's Multiply and Add kernels round (the product rounded, then
;; the sum), row by row, four channels a step (scale and shift float32 arrays of `c`; out may be x or dy):
;;   affine_f32:  out[r, k] = x[r, k] * scale[k] + shift[k]
;;   scale_f32:   out[r, k] = dy[r, k] * scale[k]
;; Offsets in bytes. The memory import is rewritten to an unshared one for tfjs-wasm's one-thread build
;; (`npm run build:wasm` assembles both).
(module
  (import "env" "memory" (memory 1 65536 shared))

  ;; lanes 2 and 3 of a f32x4 as a f64x2
  (func $high (param $v v128) (result v128)
    (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $v) (local.get $v))))
  (func $low (param $v v128) (result v128)
    (f64x2.promote_low_f32x4 (local.get $v)))
  ;; two f64x2 rounded to float32 as one f32x4 (lo's lanes first)
  (func $round4 (param $lo v128) (param $hi v128) (result v128)
    (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23
      (f32x4.demote_f64x2_zero (local.get $lo)) (f32x4.demote_f64x2_zero (local.get $hi))))

  (func (export "sums") (param $x i32) (param $rows i32) (param $c i32) (param $tile i32) (param $acc i32)
    (local $t0 i32) (local $n i32) (local $k i32) (local $p i32) (local $i i32) (local $stride i32)
    (local $s0 v128) (local $s1 v128) (local $v v128)
    (local.set $stride (i32.shl (local.get $c) (i32.const 2)))
    (block $done
      (loop $tiles
        (br_if $done (i32.ge_u (local.get $t0) (local.get $rows)))
        (local.set $n (i32.sub (local.get $rows) (local.get $t0)))
        (if (i32.gt_u (local.get $n) (local.get $tile)) (then (local.set $n (local.get $tile))))
        (local.set $k (i32.const 0))
        (loop $quads
          (local.set $s0 (v128.load (i32.add (local.get $acc) (i32.shl (local.get $k) (i32.const 3)))))
          (local.set $s1 (v128.load offset=16 (i32.add (local.get $acc) (i32.shl (local.get $k) (i32.const 3)))))
          (local.set $p (i32.add (local.get $x)
            (i32.shl (i32.add (i32.mul (local.get $t0) (local.get $c)) (local.get $k)) (i32.const 2))))
          (local.set $i (local.get $n))
          (loop $rows_
            (local.set $v (v128.load (local.get $p)))
            (local.set $s0 (f64x2.add (local.get $s0) (call $low (local.get $v))))
            (local.set $s1 (f64x2.add (local.get $s1) (call $high (local.get $v))))
            (local.set $p (i32.add (local.get $p) (local.get $stride)))
            (local.set $i (i32.sub (local.get $i) (i32.const 1)))
            (br_if $rows_ (local.get $i)))
          (v128.store (i32.add (local.get $acc) (i32.shl (local.get $k) (i32.const 3))) (local.get $s0))
          (v128.store offset=16 (i32.add (local.get $acc) (i32.shl (local.get $k) (i32.const 3))) (local.get $s1))
          (local.set $k (i32.add (local.get $k) (i32.const 4)))
          (br_if $quads (i32.lt_u (local.get $k) (local.get $c))))
        (local.set $t0 (i32.add (local.get $t0) (local.get $n)))
        (br $tiles))))

  (func (export "squares") (param $x i32) (param $rows i32) (param $c i32) (param $tile i32) (param $mean i32) (param $acc i32)
    (local $t0 i32) (local $n i32) (local $k i32) (local $p i32) (local $i i32) (local $stride i32)
    (local $s0 v128) (local $s1 v128) (local $m0 v128) (local $m1 v128) (local $v v128) (local $d v128)
    (local.set $stride (i32.shl (local.get $c) (i32.const 2)))
    (block $done
      (loop $tiles
        (br_if $done (i32.ge_u (local.get $t0) (local.get $rows)))
        (local.set $n (i32.sub (local.get $rows) (local.get $t0)))
        (if (i32.gt_u (local.get $n) (local.get $tile)) (then (local.set $n (local.get $tile))))
        (local.set $k (i32.const 0))
        (loop $quads
          (local.set $s0 (v128.load (i32.add (local.get $acc) (i32.shl (local.get $k) (i32.const 3)))))
          (local.set $s1 (v128.load offset=16 (i32.add (local.get $acc) (i32.shl (local.get $k) (i32.const 3)))))
          (local.set $m0 (v128.load (i32.add (local.get $mean) (i32.shl (local.get $k) (i32.const 3)))))
          (local.set $m1 (v128.load offset=16 (i32.add (local.get $mean) (i32.shl (local.get $k) (i32.const 3)))))
          (local.set $p (i32.add (local.get $x)
            (i32.shl (i32.add (i32.mul (local.get $t0) (local.get $c)) (local.get $k)) (i32.const 2))))
          (local.set $i (local.get $n))
          (loop $rows_
            (local.set $v (v128.load (local.get $p)))
            (local.set $d (f64x2.sub (call $low (local.get $v)) (local.get $m0)))
            (local.set $s0 (f64x2.add (local.get $s0) (f64x2.mul (local.get $d) (local.get $d))))
            (local.set $d (f64x2.sub (call $high (local.get $v)) (local.get $m1)))
            (local.set $s1 (f64x2.add (local.get $s1) (f64x2.mul (local.get $d) (local.get $d))))
            (local.set $p (i32.add (local.get $p) (local.get $stride)))
            (local.set $i (i32.sub (local.get $i) (i32.const 1)))
            (br_if $rows_ (local.get $i)))
          (v128.store (i32.add (local.get $acc) (i32.shl (local.get $k) (i32.const 3))) (local.get $s0))
          (v128.store offset=16 (i32.add (local.get $acc) (i32.shl (local.get $k) (i32.const 3))) (local.get $s1))
          (local.set $k (i32.add (local.get $k) (i32.const 4)))
          (br_if $quads (i32.lt_u (local.get $k) (local.get $c))))
        (local.set $t0 (i32.add (local.get $t0) (local.get $n)))
        (br $tiles))))

  (func (export "scale_shift") (param $x i32) (param $rows i32) (param $c i32) (param $tile i32)
    (param $scale i32) (param $shift i32) (param $out i32)
    (local $t0 i32) (local $n i32) (local $k i32) (local $p i32) (local $q i32) (local $i i32) (local $stride i32)
    (local $a0 v128) (local $a1 v128) (local $b0 v128) (local $b1 v128) (local $v v128)
    (local.set $stride (i32.shl (local.get $c) (i32.const 2)))
    (block $done
      (loop $tiles
        (br_if $done (i32.ge_u (local.get $t0) (local.get $rows)))
        (local.set $n (i32.sub (local.get $rows) (local.get $t0)))
        (if (i32.gt_u (local.get $n) (local.get $tile)) (then (local.set $n (local.get $tile))))
        (local.set $k (i32.const 0))
        (loop $quads
          (local.set $a0 (v128.load (i32.add (local.get $scale) (i32.shl (local.get $k) (i32.const 3)))))
          (local.set $a1 (v128.load offset=16 (i32.add (local.get $scale) (i32.shl (local.get $k) (i32.const 3)))))
          (local.set $b0 (v128.load (i32.add (local.get $shift) (i32.shl (local.get $k) (i32.const 3)))))
          (local.set $b1 (v128.load offset=16 (i32.add (local.get $shift) (i32.shl (local.get $k) (i32.const 3)))))
          (local.set $q (i32.shl (i32.add (i32.mul (local.get $t0) (local.get $c)) (local.get $k)) (i32.const 2)))
          (local.set $p (i32.add (local.get $x) (local.get $q)))
          (local.set $q (i32.add (local.get $out) (local.get $q)))
          (local.set $i (local.get $n))
          (loop $rows_
            (local.set $v (v128.load (local.get $p)))
            (v128.store (local.get $q) (call $round4
              (f64x2.add (f64x2.mul (call $low (local.get $v)) (local.get $a0)) (local.get $b0))
              (f64x2.add (f64x2.mul (call $high (local.get $v)) (local.get $a1)) (local.get $b1))))
            (local.set $p (i32.add (local.get $p) (local.get $stride)))
            (local.set $q (i32.add (local.get $q) (local.get $stride)))
            (local.set $i (i32.sub (local.get $i) (i32.const 1)))
            (br_if $rows_ (local.get $i)))
          (local.set $k (i32.add (local.get $k) (i32.const 4)))
          (br_if $quads (i32.lt_u (local.get $k) (local.get $c))))
        (local.set $t0 (i32.add (local.get $t0) (local.get $n)))
        (br $tiles))))

  (func (export "grad_sums") (param $dy i32) (param $x i32) (param $rows i32) (param $c i32) (param $tile i32)
    (param $mean i32) (param $sdy i32) (param $sdx i32)
    (local $t0 i32) (local $n i32) (local $k i32) (local $p i32) (local $q i32) (local $i i32) (local $stride i32)
    (local $d0 v128) (local $d1 v128) (local $e0 v128) (local $e1 v128) (local $m0 v128) (local $m1 v128)
    (local $v v128) (local $w v128) (local $g v128)
    (local.set $stride (i32.shl (local.get $c) (i32.const 2)))
    (block $done
      (loop $tiles
        (br_if $done (i32.ge_u (local.get $t0) (local.get $rows)))
        (local.set $n (i32.sub (local.get $rows) (local.get $t0)))
        (if (i32.gt_u (local.get $n) (local.get $tile)) (then (local.set $n (local.get $tile))))
        (local.set $k (i32.const 0))
        (loop $quads
          (local.set $d0 (v128.load (i32.add (local.get $sdy) (i32.shl (local.get $k) (i32.const 3)))))
          (local.set $d1 (v128.load offset=16 (i32.add (local.get $sdy) (i32.shl (local.get $k) (i32.const 3)))))
          (local.set $e0 (v128.load (i32.add (local.get $sdx) (i32.shl (local.get $k) (i32.const 3)))))
          (local.set $e1 (v128.load offset=16 (i32.add (local.get $sdx) (i32.shl (local.get $k) (i32.const 3)))))
          (local.set $m0 (v128.load (i32.add (local.get $mean) (i32.shl (local.get $k) (i32.const 3)))))
          (local.set $m1 (v128.load offset=16 (i32.add (local.get $mean) (i32.shl (local.get $k) (i32.const 3)))))
          (local.set $q (i32.shl (i32.add (i32.mul (local.get $t0) (local.get $c)) (local.get $k)) (i32.const 2)))
          (local.set $p (i32.add (local.get $dy) (local.get $q)))
          (local.set $q (i32.add (local.get $x) (local.get $q)))
          (local.set $i (local.get $n))
          (loop $rows_
            (local.set $v (v128.load (local.get $p)))
            (local.set $w (v128.load (local.get $q)))
            (local.set $g (call $low (local.get $v)))
            (local.set $d0 (f64x2.add (local.get $d0) (local.get $g)))
            (local.set $e0 (f64x2.add (local.get $e0)
              (f64x2.mul (local.get $g) (f64x2.sub (call $low (local.get $w)) (local.get $m0)))))
            (local.set $g (call $high (local.get $v)))
            (local.set $d1 (f64x2.add (local.get $d1) (local.get $g)))
            (local.set $e1 (f64x2.add (local.get $e1)
              (f64x2.mul (local.get $g) (f64x2.sub (call $high (local.get $w)) (local.get $m1)))))
            (local.set $p (i32.add (local.get $p) (local.get $stride)))
            (local.set $q (i32.add (local.get $q) (local.get $stride)))
            (local.set $i (i32.sub (local.get $i) (i32.const 1)))
            (br_if $rows_ (local.get $i)))
          (v128.store (i32.add (local.get $sdy) (i32.shl (local.get $k) (i32.const 3))) (local.get $d0))
          (v128.store offset=16 (i32.add (local.get $sdy) (i32.shl (local.get $k) (i32.const 3))) (local.get $d1))
          (v128.store (i32.add (local.get $sdx) (i32.shl (local.get $k) (i32.const 3))) (local.get $e0))
          (v128.store offset=16 (i32.add (local.get $sdx) (i32.shl (local.get $k) (i32.const 3))) (local.get $e1))
          (local.set $k (i32.add (local.get $k) (i32.const 4)))
          (br_if $quads (i32.lt_u (local.get $k) (local.get $c))))
        (local.set $t0 (i32.add (local.get $t0) (local.get $n)))
        (br $tiles))))

  ;; the terms a, b, e, mean at `terms`: four f64 arrays of `c`, one after the other
  (func (export "input_grad") (param $dy i32) (param $x i32) (param $rows i32) (param $c i32) (param $tile i32)
    (param $terms i32) (param $out i32)
    (local $t0 i32) (local $n i32) (local $k i32) (local $p i32) (local $q i32) (local $o i32) (local $i i32)
    (local $stride i32) (local $cb i32) (local $tk i32)
    (local $a0 v128) (local $a1 v128) (local $b0 v128) (local $b1 v128) (local $e0 v128) (local $e1 v128)
    (local $m0 v128) (local $m1 v128) (local $v v128) (local $w v128)
    (local.set $stride (i32.shl (local.get $c) (i32.const 2)))
    (local.set $cb (i32.shl (local.get $c) (i32.const 3)))
    (block $done
      (loop $tiles
        (br_if $done (i32.ge_u (local.get $t0) (local.get $rows)))
        (local.set $n (i32.sub (local.get $rows) (local.get $t0)))
        (if (i32.gt_u (local.get $n) (local.get $tile)) (then (local.set $n (local.get $tile))))
        (local.set $k (i32.const 0))
        (loop $quads
          (local.set $tk (i32.add (local.get $terms) (i32.shl (local.get $k) (i32.const 3))))
          (local.set $a0 (v128.load (local.get $tk)))
          (local.set $a1 (v128.load offset=16 (local.get $tk)))
          (local.set $tk (i32.add (local.get $tk) (local.get $cb)))
          (local.set $b0 (v128.load (local.get $tk)))
          (local.set $b1 (v128.load offset=16 (local.get $tk)))
          (local.set $tk (i32.add (local.get $tk) (local.get $cb)))
          (local.set $e0 (v128.load (local.get $tk)))
          (local.set $e1 (v128.load offset=16 (local.get $tk)))
          (local.set $tk (i32.add (local.get $tk) (local.get $cb)))
          (local.set $m0 (v128.load (local.get $tk)))
          (local.set $m1 (v128.load offset=16 (local.get $tk)))
          (local.set $o (i32.shl (i32.add (i32.mul (local.get $t0) (local.get $c)) (local.get $k)) (i32.const 2)))
          (local.set $p (i32.add (local.get $dy) (local.get $o)))
          (local.set $q (i32.add (local.get $x) (local.get $o)))
          (local.set $o (i32.add (local.get $out) (local.get $o)))
          (local.set $i (local.get $n))
          (loop $rows_
            (local.set $v (v128.load (local.get $p)))
            (local.set $w (v128.load (local.get $q)))
            (v128.store (local.get $o) (call $round4
              (f64x2.add
                (f64x2.add (f64x2.mul (local.get $a0) (call $low (local.get $v)))
                  (f64x2.mul (local.get $b0) (f64x2.sub (call $low (local.get $w)) (local.get $m0))))
                (local.get $e0))
              (f64x2.add
                (f64x2.add (f64x2.mul (local.get $a1) (call $high (local.get $v)))
                  (f64x2.mul (local.get $b1) (f64x2.sub (call $high (local.get $w)) (local.get $m1))))
                (local.get $e1))))
            (local.set $p (i32.add (local.get $p) (local.get $stride)))
            (local.set $q (i32.add (local.get $q) (local.get $stride)))
            (local.set $o (i32.add (local.get $o) (local.get $stride)))
            (local.set $i (i32.sub (local.get $i) (i32.const 1)))
            (br_if $rows_ (local.get $i)))
          (local.set $k (i32.add (local.get $k) (i32.const 4)))
          (br_if $quads (i32.lt_u (local.get $k) (local.get $c))))
        (local.set $t0 (i32.add (local.get $t0) (local.get $n)))
        (br $tiles))))
  (func (export "affine_f32") (param $x i32) (param $rows i32) (param $c i32) (param $scale i32) (param $shift i32) (param $out i32)
    (local $r i32) (local $k i32) (local $stride i32)
    (local.set $stride (i32.shl (local.get $c) (i32.const 2)))
    (block $done
      (loop $rows_
        (br_if $done (i32.ge_u (local.get $r) (local.get $rows)))
        (local.set $k (i32.const 0))
        (loop $quads
          (v128.store (i32.add (local.get $out) (local.get $k))
            (f32x4.add
              (f32x4.mul (v128.load (i32.add (local.get $x) (local.get $k))) (v128.load (i32.add (local.get $scale) (local.get $k))))
              (v128.load (i32.add (local.get $shift) (local.get $k)))))
          (local.set $k (i32.add (local.get $k) (i32.const 16)))
          (br_if $quads (i32.lt_u (local.get $k) (local.get $stride))))
        (local.set $x (i32.add (local.get $x) (local.get $stride)))
        (local.set $out (i32.add (local.get $out) (local.get $stride)))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $rows_))))

  (func (export "scale_f32") (param $dy i32) (param $rows i32) (param $c i32) (param $scale i32) (param $out i32)
    (local $r i32) (local $k i32) (local $stride i32)
    (local.set $stride (i32.shl (local.get $c) (i32.const 2)))
    (block $done
      (loop $rows_
        (br_if $done (i32.ge_u (local.get $r) (local.get $rows)))
        (local.set $k (i32.const 0))
        (loop $quads
          (v128.store (i32.add (local.get $out) (local.get $k))
            (f32x4.mul (v128.load (i32.add (local.get $dy) (local.get $k))) (v128.load (i32.add (local.get $scale) (local.get $k)))))
          (local.set $k (i32.add (local.get $k) (i32.const 16)))
          (br_if $quads (i32.lt_u (local.get $k) (local.get $stride))))
        (local.set $dy (i32.add (local.get $dy) (local.get $stride)))
        (local.set $out (i32.add (local.get $out) (local.get $stride)))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $rows_))))
)
