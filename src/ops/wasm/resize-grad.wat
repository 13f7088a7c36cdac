;; The gradient of a bilinear resize (tfjs's ResizeBilinearGrad) on the wasm backend
;; (src/ops/resize-grad-wasm.ts drives it), run on tfjs-wasm's own memory: dy [batch, H, W, c] and dx
;; [batch, h, w, c] are float32 NHWC tensors in place (offsets in bytes). dx is zeroed, then each dy
;; element is spread over the four dx elements its forward value was read from, in dy's order:
;; output pixels (b, r, col) row by row, and for each the top-left, top-right, bottom-left and
;; bottom-right terms, one after the other (where two of them are the same element, both add to it in
;; that order). With the row's lerp yl, the column's xl (float32) and v = dy[b, r, col, k]:
;;   top-left     += f64(v) (1 - yl) (1 - xl)    in float64, the sum rounded to float32
;;   top-right    += f64(v) (1 - yl) xl          in float64, the sum rounded to float32
;;   bottom-left  += f64(f32(v yl)) (1 - xl)     in float64, the sum rounded to float32
;;   bottom-right += f32(f32(v yl) xl)           in float32
;; the mixed precision of tfjs-wasm's own kernel (C++ double literals beside float lerps), and its scales
;; (float32 (in - a) / (out - a), a = 1 with `align` and out > 1) and indices (truncated, the far one
;; ceil-ed and clamped to the last row / column): the same bits. Four channels a step (a f32x4 of dy,
;; two f64x2 for the float64 terms), the channels past the last multiple of four one at a time.
;; The memory import is rewritten to an unshared one for tfjs-wasm's one-thread build (`npm run build:wasm`
;; assembles both).
(module
  (import "env" "memory" (memory 1 65536 shared))

  ;; lanes 2 and 3 of a f32x4 as a f64x2
  (func $high (param $v v128) (result v128)
    (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $v) (local.get $v))))
  (func $low (param $v v128) (result v128)
    (f64x2.promote_low_f32x4 (local.get $v)))

  ;; the four float32 at $p += (lo, hi) in float64, each sum rounded to float32
  (func $add4 (param $p i32) (param $lo v128) (param $hi v128)
    (local $d v128)
    (local.set $d (v128.load (local.get $p)))
    (v128.store (local.get $p)
      (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23
        (f32x4.demote_f64x2_zero (f64x2.add (call $low (local.get $d)) (local.get $lo)))
        (f32x4.demote_f64x2_zero (f64x2.add (call $high (local.get $d)) (local.get $hi))))))

  ;; the float32 at $p += t in float64, the sum rounded to float32
  (func $add1 (param $p i32) (param $t f64)
    (f32.store (local.get $p)
      (f32.demote_f64 (f64.add (f64.promote_f32 (f32.load (local.get $p))) (local.get $t)))))

  ;; float32 (in - a) / (out - a), a = 1 when aligning corners and out > 1
  (func $scale (param $in i32) (param $out i32) (param $align i32) (result f32)
    (local $a i32)
    (local.set $a (i32.and (local.get $align) (i32.gt_s (local.get $out) (i32.const 1))))
    (f32.div (f32.convert_i32_s (i32.sub (local.get $in) (local.get $a)))
      (f32.convert_i32_s (i32.sub (local.get $out) (local.get $a)))))

  (func (export "run") (param $dy i32) (param $dx i32) (param $batch i32) (param $H i32) (param $W i32)
    (param $h i32) (param $w i32) (param $c i32) (param $align i32)
    (local $hs f32) (local $ws f32) (local $y f32) (local $x f32) (local $yl f32) (local $xl f32)
    (local $omy f64) (local $omx f64) (local $xl64 f64)
    (local $b i32) (local $r i32) (local $col i32) (local $k i32) (local $quads i32) (local $pix i32)
    (local $top i32) (local $bottom i32) (local $left i32) (local $right i32) (local $rtop i32) (local $rbottom i32)
    (local $ptl i32) (local $ptr i32) (local $pbl i32) (local $pbr i32) (local $pd i32) (local $at i32)
    (local $yv v128) (local $xv v128) (local $omyv v128) (local $omxv v128) (local $xl64v v128)
    (local $v v128) (local $a0 v128) (local $a1 v128) (local $p v128)
    (local $s f32) (local $a f64) (local $ps f32)
    (local.set $pix (i32.shl (local.get $c) (i32.const 2)))
    (memory.fill (local.get $dx) (i32.const 0)
      (i32.mul (i32.mul (i32.mul (local.get $batch) (local.get $h)) (local.get $w)) (local.get $pix)))
    ;; nothing to spread (an empty dy) or nowhere to spread it (an empty dx)
    (if (i32.or (i32.or (i32.or (i32.le_s (local.get $batch) (i32.const 0)) (i32.le_s (local.get $c) (i32.const 0)))
          (i32.or (i32.le_s (local.get $H) (i32.const 0)) (i32.le_s (local.get $W) (i32.const 0))))
          (i32.or (i32.le_s (local.get $h) (i32.const 0)) (i32.le_s (local.get $w) (i32.const 0))))
      (then (return)))
    (local.set $hs (call $scale (local.get $h) (local.get $H) (local.get $align)))
    (local.set $ws (call $scale (local.get $w) (local.get $W) (local.get $align)))
    (local.set $quads (i32.and (local.get $c) (i32.const -4)))
    (local.set $pd (local.get $dy))
    (loop $images
      (local.set $r (i32.const 0))
      (loop $rows
        (local.set $y (f32.mul (f32.convert_i32_s (local.get $r)) (local.get $hs)))
        (local.set $top (i32.trunc_sat_f32_s (local.get $y)))
        (local.set $bottom (i32.trunc_sat_f32_s (f32.ceil (local.get $y))))
        (if (i32.gt_s (local.get $bottom) (i32.sub (local.get $h) (i32.const 1)))
          (then (local.set $bottom (i32.sub (local.get $h) (i32.const 1)))))
        (local.set $yl (f32.sub (local.get $y) (f32.floor (local.get $y))))
        (local.set $omy (f64.sub (f64.const 1) (f64.promote_f32 (local.get $yl))))
        (local.set $omyv (f64x2.splat (local.get $omy)))
        (local.set $yv (f32x4.splat (local.get $yl)))
        ;; byte offsets of dx's top and bottom rows in this image
        (local.set $rtop (i32.add (local.get $dx)
          (i32.mul (i32.mul (i32.add (i32.mul (local.get $b) (local.get $h)) (local.get $top)) (local.get $w)) (local.get $pix))))
        (local.set $rbottom (i32.add (local.get $dx)
          (i32.mul (i32.mul (i32.add (i32.mul (local.get $b) (local.get $h)) (local.get $bottom)) (local.get $w)) (local.get $pix))))
        (local.set $col (i32.const 0))
        (loop $cols
          (local.set $x (f32.mul (f32.convert_i32_s (local.get $col)) (local.get $ws)))
          (local.set $left (i32.trunc_sat_f32_s (local.get $x)))
          (local.set $right (i32.trunc_sat_f32_s (f32.ceil (local.get $x))))
          (if (i32.gt_s (local.get $right) (i32.sub (local.get $w) (i32.const 1)))
            (then (local.set $right (i32.sub (local.get $w) (i32.const 1)))))
          (local.set $xl (f32.sub (local.get $x) (f32.floor (local.get $x))))
          (local.set $xl64 (f64.promote_f32 (local.get $xl)))
          (local.set $omx (f64.sub (f64.const 1) (local.get $xl64)))
          (local.set $xl64v (f64x2.splat (local.get $xl64)))
          (local.set $omxv (f64x2.splat (local.get $omx)))
          (local.set $xv (f32x4.splat (local.get $xl)))
          (local.set $ptl (i32.add (local.get $rtop) (i32.mul (local.get $left) (local.get $pix))))
          (local.set $ptr (i32.add (local.get $rtop) (i32.mul (local.get $right) (local.get $pix))))
          (local.set $pbl (i32.add (local.get $rbottom) (i32.mul (local.get $left) (local.get $pix))))
          (local.set $pbr (i32.add (local.get $rbottom) (i32.mul (local.get $right) (local.get $pix))))
          (local.set $k (i32.const 0))
          (block $quads_done
            (loop $quads_
              (br_if $quads_done (i32.ge_s (local.get $k) (local.get $quads)))
              (local.set $at (i32.shl (local.get $k) (i32.const 2)))
              (local.set $v (v128.load (i32.add (local.get $pd) (local.get $at))))
              (local.set $a0 (f64x2.mul (call $low (local.get $v)) (local.get $omyv)))
              (local.set $a1 (f64x2.mul (call $high (local.get $v)) (local.get $omyv)))
              (call $add4 (i32.add (local.get $ptl) (local.get $at))
                (f64x2.mul (local.get $a0) (local.get $omxv)) (f64x2.mul (local.get $a1) (local.get $omxv)))
              (call $add4 (i32.add (local.get $ptr) (local.get $at))
                (f64x2.mul (local.get $a0) (local.get $xl64v)) (f64x2.mul (local.get $a1) (local.get $xl64v)))
              (local.set $p (f32x4.mul (local.get $v) (local.get $yv)))
              (call $add4 (i32.add (local.get $pbl) (local.get $at))
                (f64x2.mul (call $low (local.get $p)) (local.get $omxv)) (f64x2.mul (call $high (local.get $p)) (local.get $omxv)))
              (v128.store (i32.add (local.get $pbr) (local.get $at))
                (f32x4.add (v128.load (i32.add (local.get $pbr) (local.get $at))) (f32x4.mul (local.get $p) (local.get $xv))))
              (local.set $k (i32.add (local.get $k) (i32.const 4)))
              (br $quads_)))
          (block $tail_done
            (loop $tail
              (br_if $tail_done (i32.ge_s (local.get $k) (local.get $c)))
              (local.set $at (i32.shl (local.get $k) (i32.const 2)))
              (local.set $s (f32.load (i32.add (local.get $pd) (local.get $at))))
              (local.set $a (f64.mul (f64.promote_f32 (local.get $s)) (local.get $omy)))
              (call $add1 (i32.add (local.get $ptl) (local.get $at)) (f64.mul (local.get $a) (local.get $omx)))
              (call $add1 (i32.add (local.get $ptr) (local.get $at)) (f64.mul (local.get $a) (local.get $xl64)))
              (local.set $ps (f32.mul (local.get $s) (local.get $yl)))
              (call $add1 (i32.add (local.get $pbl) (local.get $at)) (f64.mul (f64.promote_f32 (local.get $ps)) (local.get $omx)))
              (f32.store (i32.add (local.get $pbr) (local.get $at))
                (f32.add (f32.load (i32.add (local.get $pbr) (local.get $at))) (f32.mul (local.get $ps) (local.get $xl))))
              (local.set $k (i32.add (local.get $k) (i32.const 1)))
              (br $tail)))
          (local.set $pd (i32.add (local.get $pd) (local.get $pix)))
          (local.set $col (i32.add (local.get $col) (i32.const 1)))
          (br_if $cols (i32.lt_s (local.get $col) (local.get $W))))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br_if $rows (i32.lt_s (local.get $r) (local.get $H))))
      (local.set $b (i32.add (local.get $b) (i32.const 1)))
      (br_if $images (i32.lt_s (local.get $b) (local.get $batch))))))
