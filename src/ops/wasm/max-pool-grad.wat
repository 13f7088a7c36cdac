;; The max-pool gradient on the wasm backend (src/ops/wasm-kernels.ts's maxPoolGrad drives it), on
;; tfjs-wasm's own memory: x [n, h, w, c] (the pool's input), dy [n, oh, ow, c], dx [n, h, w, c] float32
;; NHWC; offsets in bytes. dx is zeroed, then each window's dy goes to the window's first maximum in
;; row-major order (a later value replaces the maximum only when greater, so a NaN first stays), windows in
;; output order, each addition a float32 add: the bits of the JS loop it replaces. Windows are clipped to
;; the input (padding never counts); an empty window adds nothing. Four channels a step (the maxima and
;; their element indices in two vectors), the channels past the last multiple of four one at a time.
;; The memory import is rewritten to an unshared one for tfjs-wasm's one-thread build (`npm run build:wasm`
;; assembles both).
(module
  (import "env" "memory" (memory 1 65536 shared))

  ;; dx[index] += dy[at] (float32) for an element index >= 0
  (func $add (param $dx i32) (param $index i32) (param $dy i32) (param $at i32)
    (local $p i32)
    (if (i32.ge_s (local.get $index) (i32.const 0))
      (then
        (local.set $p (i32.add (local.get $dx) (i32.shl (local.get $index) (i32.const 2))))
        (f32.store (local.get $p)
          (f32.add (f32.load (local.get $p)) (f32.load (i32.add (local.get $dy) (i32.shl (local.get $at) (i32.const 2)))))))))

  (func (export "grad") (param $x i32) (param $dy i32) (param $dx i32) (param $n i32) (param $h i32) (param $w i32)
    (param $c i32) (param $oh i32) (param $ow i32) (param $fh i32) (param $fw i32) (param $sh i32) (param $sw i32)
    (param $top i32) (param $left i32)
    (local $b i32) (local $i i32) (local $j i32) (local $k i32) (local $r i32) (local $q i32)
    (local $r0 i32) (local $r1 i32) (local $c0 i32) (local $c1 i32) (local $at i32) (local $g i32) (local $quads i32)
    (local $m v128) (local $a v128) (local $v v128) (local $take v128)
    (local $ms f32) (local $as i32) (local $vs f32)
    (memory.fill (local.get $dx) (i32.const 0)
      (i32.shl (i32.mul (i32.mul (i32.mul (local.get $n) (local.get $h)) (local.get $w)) (local.get $c)) (i32.const 2)))
    (if (i32.or (i32.or (i32.le_s (local.get $n) (i32.const 0)) (i32.le_s (local.get $c) (i32.const 0)))
          (i32.or (i32.le_s (local.get $oh) (i32.const 0)) (i32.le_s (local.get $ow) (i32.const 0))))
      (then (return)))
    (local.set $quads (i32.and (local.get $c) (i32.const -4)))
    (loop $images
      (local.set $i (i32.const 0))
      (loop $rows
        ;; the window's rows, clipped: [r0, r1)
        (local.set $r0 (i32.sub (i32.mul (local.get $i) (local.get $sh)) (local.get $top)))
        (local.set $r1 (i32.add (local.get $r0) (local.get $fh)))
        (if (i32.lt_s (local.get $r0) (i32.const 0)) (then (local.set $r0 (i32.const 0))))
        (if (i32.gt_s (local.get $r1) (local.get $h)) (then (local.set $r1 (local.get $h))))
        (local.set $j (i32.const 0))
        (loop $cols
          (local.set $c0 (i32.sub (i32.mul (local.get $j) (local.get $sw)) (local.get $left)))
          (local.set $c1 (i32.add (local.get $c0) (local.get $fw)))
          (if (i32.lt_s (local.get $c0) (i32.const 0)) (then (local.set $c0 (i32.const 0))))
          (if (i32.gt_s (local.get $c1) (local.get $w)) (then (local.set $c1 (local.get $w))))
          ;; dy's element index of this window's channel 0
          (local.set $g (i32.mul (i32.add (i32.mul (i32.add (i32.mul (local.get $b) (local.get $oh)) (local.get $i)) (local.get $ow))
            (local.get $j)) (local.get $c)))
          (local.set $k (i32.const 0))
          (block $quads_done
            (loop $quads_
              (br_if $quads_done (i32.ge_s (local.get $k) (local.get $quads)))
              (local.set $m (v128.const f32x4 -inf -inf -inf -inf))
              (local.set $a (v128.const i32x4 -1 -1 -1 -1))
              (local.set $r (local.get $r0))
              (block $window_done
                (loop $window
                  (br_if $window_done (i32.ge_s (local.get $r) (local.get $r1)))
                  (local.set $q (local.get $c0))
                  (block $row_done
                    (loop $row
                      (br_if $row_done (i32.ge_s (local.get $q) (local.get $c1)))
                      (local.set $at (i32.add (i32.mul (i32.add (i32.mul (i32.add (i32.mul (local.get $b) (local.get $h))
                        (local.get $r)) (local.get $w)) (local.get $q)) (local.get $c)) (local.get $k)))
                      (local.set $v (v128.load (i32.add (local.get $x) (i32.shl (local.get $at) (i32.const 2)))))
                      (local.set $take (v128.or (f32x4.gt (local.get $v) (local.get $m))
                        (i32x4.lt_s (local.get $a) (v128.const i32x4 0 0 0 0))))
                      (local.set $m (v128.bitselect (local.get $v) (local.get $m) (local.get $take)))
                      (local.set $a (v128.bitselect
                        (i32x4.add (i32x4.splat (local.get $at)) (v128.const i32x4 0 1 2 3)) (local.get $a) (local.get $take)))
                      (local.set $q (i32.add (local.get $q) (i32.const 1)))
                      (br $row)))
                  (local.set $r (i32.add (local.get $r) (i32.const 1)))
                  (br $window)))
              (local.set $at (i32.add (local.get $g) (local.get $k)))
              (call $add (local.get $dx) (i32x4.extract_lane 0 (local.get $a)) (local.get $dy) (local.get $at))
              (call $add (local.get $dx) (i32x4.extract_lane 1 (local.get $a)) (local.get $dy) (i32.add (local.get $at) (i32.const 1)))
              (call $add (local.get $dx) (i32x4.extract_lane 2 (local.get $a)) (local.get $dy) (i32.add (local.get $at) (i32.const 2)))
              (call $add (local.get $dx) (i32x4.extract_lane 3 (local.get $a)) (local.get $dy) (i32.add (local.get $at) (i32.const 3)))
              (local.set $k (i32.add (local.get $k) (i32.const 4)))
              (br $quads_)))
          (block $tail_done
            (loop $tail
              (br_if $tail_done (i32.ge_s (local.get $k) (local.get $c)))
              (local.set $ms (f32.const -inf))
              (local.set $as (i32.const -1))
              (local.set $r (local.get $r0))
              (block $swindow_done
                (loop $swindow
                  (br_if $swindow_done (i32.ge_s (local.get $r) (local.get $r1)))
                  (local.set $q (local.get $c0))
                  (block $srow_done
                    (loop $srow
                      (br_if $srow_done (i32.ge_s (local.get $q) (local.get $c1)))
                      (local.set $at (i32.add (i32.mul (i32.add (i32.mul (i32.add (i32.mul (local.get $b) (local.get $h))
                        (local.get $r)) (local.get $w)) (local.get $q)) (local.get $c)) (local.get $k)))
                      (local.set $vs (f32.load (i32.add (local.get $x) (i32.shl (local.get $at) (i32.const 2)))))
                      (if (i32.or (f32.gt (local.get $vs) (local.get $ms)) (i32.lt_s (local.get $as) (i32.const 0)))
                        (then (local.set $ms (local.get $vs)) (local.set $as (local.get $at))))
                      (local.set $q (i32.add (local.get $q) (i32.const 1)))
                      (br $srow)))
                  (local.set $r (i32.add (local.get $r) (i32.const 1)))
                  (br $swindow)))
              (call $add (local.get $dx) (local.get $as) (local.get $dy) (i32.add (local.get $g) (local.get $k)))
              (local.set $k (i32.add (local.get $k) (i32.const 1)))
              (br $tail)))
          (local.set $j (i32.add (local.get $j) (i32.const 1)))
          (br_if $cols (i32.lt_s (local.get $j) (local.get $ow))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $rows (i32.lt_s (local.get $i) (local.get $oh))))
      (local.set $b (i32.add (local.get $b) (i32.const 1)))
      (br_if $images (i32.lt_s (local.get $b) (local.get $n))))))
