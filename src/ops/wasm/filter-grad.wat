;; The filter gradient of a convolution on the host backends (src/ops/filter-grad-kernel.ts drives it):
;; one call adds `rows` runs of `count` output pixels into `cn` x `on` entries of one tap's slab of dW,
;;   out[ci * cout + co] += sum over r < rows, p < count of x[r * xrow + p * xstride + ci] * dy[r * dyrow + p * cout + co]
;; for ci < cn, co < on
;; (offsets in bytes, x and dy float32): a run is `count` consecutive output pixels of one output row
;; (dy, `cout` floats each) and the input pixels one tap reads for them (x, `xstride` bytes apart, `cin`
;; floats each); `xrow` / `dyrow`: bytes from one row's run to the next row's.
;; Register tiles of 4 input x 8 output channels: per pixel two 4-lane loads of dy, four broadcast
;; loads of x, eight multiply-adds. Multiply and add are separate instructions (no fused multiply-add):
;; the same bits on every machine. `cn` must be a multiple of 4, `on` of 8 (`cout`: dy's channels, the
;; floats from one pixel of dy to the next and from one row of the slab to the next).
(module
  (import "env" "memory" (memory 1 65536 shared))
  (func (export "run") (param $x i32) (param $dy i32) (param $out i32) (param $count i32)
    (param $xstride i32) (param $cn i32) (param $on i32) (param $cout i32) (param $rows i32) (param $xrow i32) (param $dyrow i32)
    (local $cb i32) (local $ob i32) (local $i i32) (local $r i32) (local $xp i32) (local $dp i32) (local $ds i32) (local $op i32)
    (local $xr i32) (local $dr i32)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local $a4 v128) (local $a5 v128) (local $a6 v128) (local $a7 v128)
    (local $d0 v128) (local $d1 v128) (local $s v128)
    (if (i32.or (i32.eqz (local.get $count)) (i32.eqz (local.get $rows))) (then (return)))
    (local.set $ds (i32.shl (local.get $cout) (i32.const 2)))
    (loop $ci_blocks
      (local.set $ob (i32.const 0))
      (loop $co_blocks
        ;; the tile's 4 rows of 8 sums so far
        (local.set $op (i32.add (local.get $out)
          (i32.shl (i32.add (i32.mul (local.get $cb) (local.get $cout)) (local.get $ob)) (i32.const 2))))
        (local.set $a0 (v128.load (local.get $op)))
        (local.set $a1 (v128.load offset=16 (local.get $op)))
        (local.set $a2 (v128.load (i32.add (local.get $op) (local.get $ds))))
        (local.set $a3 (v128.load offset=16 (i32.add (local.get $op) (local.get $ds))))
        (local.set $a4 (v128.load (i32.add (local.get $op) (i32.shl (local.get $ds) (i32.const 1)))))
        (local.set $a5 (v128.load offset=16 (i32.add (local.get $op) (i32.shl (local.get $ds) (i32.const 1)))))
        (local.set $a6 (v128.load (i32.add (local.get $op) (i32.mul (local.get $ds) (i32.const 3)))))
        (local.set $a7 (v128.load offset=16 (i32.add (local.get $op) (i32.mul (local.get $ds) (i32.const 3)))))
        (local.set $xr (i32.add (local.get $x) (i32.shl (local.get $cb) (i32.const 2))))
        (local.set $dr (i32.add (local.get $dy) (i32.shl (local.get $ob) (i32.const 2))))
        (local.set $r (local.get $rows))
        (loop $runs
        (local.set $xp (local.get $xr))
        (local.set $dp (local.get $dr))
        (local.set $i (local.get $count))
        (loop $pixels
          (local.set $d0 (v128.load (local.get $dp)))
          (local.set $d1 (v128.load offset=16 (local.get $dp)))
          (local.set $s (v128.load32_splat (local.get $xp)))
          (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (local.get $s) (local.get $d0))))
          (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (local.get $s) (local.get $d1))))
          (local.set $s (v128.load32_splat offset=4 (local.get $xp)))
          (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (local.get $s) (local.get $d0))))
          (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (local.get $s) (local.get $d1))))
          (local.set $s (v128.load32_splat offset=8 (local.get $xp)))
          (local.set $a4 (f32x4.add (local.get $a4) (f32x4.mul (local.get $s) (local.get $d0))))
          (local.set $a5 (f32x4.add (local.get $a5) (f32x4.mul (local.get $s) (local.get $d1))))
          (local.set $s (v128.load32_splat offset=12 (local.get $xp)))
          (local.set $a6 (f32x4.add (local.get $a6) (f32x4.mul (local.get $s) (local.get $d0))))
          (local.set $a7 (f32x4.add (local.get $a7) (f32x4.mul (local.get $s) (local.get $d1))))
          (local.set $xp (i32.add (local.get $xp) (local.get $xstride)))
          (local.set $dp (i32.add (local.get $dp) (local.get $ds)))
          (local.set $i (i32.sub (local.get $i) (i32.const 1)))
          (br_if $pixels (local.get $i)))
        (local.set $xr (i32.add (local.get $xr) (local.get $xrow)))
        (local.set $dr (i32.add (local.get $dr) (local.get $dyrow)))
        (local.set $r (i32.sub (local.get $r) (i32.const 1)))
        (br_if $runs (local.get $r)))
        (v128.store (local.get $op) (local.get $a0))
        (v128.store offset=16 (local.get $op) (local.get $a1))
        (v128.store (i32.add (local.get $op) (local.get $ds)) (local.get $a2))
        (v128.store offset=16 (i32.add (local.get $op) (local.get $ds)) (local.get $a3))
        (v128.store (i32.add (local.get $op) (i32.shl (local.get $ds) (i32.const 1))) (local.get $a4))
        (v128.store offset=16 (i32.add (local.get $op) (i32.shl (local.get $ds) (i32.const 1))) (local.get $a5))
        (v128.store (i32.add (local.get $op) (i32.mul (local.get $ds) (i32.const 3))) (local.get $a6))
        (v128.store offset=16 (i32.add (local.get $op) (i32.mul (local.get $ds) (i32.const 3))) (local.get $a7))
        (local.set $ob (i32.add (local.get $ob) (i32.const 8)))
        (br_if $co_blocks (i32.lt_u (local.get $ob) (local.get $on))))
      (local.set $cb (i32.add (local.get $cb) (i32.const 4)))
      (br_if $ci_blocks (i32.lt_u (local.get $cb) (local.get $cn))))))
