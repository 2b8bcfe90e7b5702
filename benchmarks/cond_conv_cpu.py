"""Why ``method.estimate_every > 1`` does not pay on convolutional models on the CPU.

    nice -n 10 python benchmarks/cond_conv_cpu.py

Times one 3x3 convolution on a 32x28x28x3 batch (NHWC) and the gradient of its sum with respect
to the kernel, each compiled alone and inside a ``jax.lax.cond`` branch. XLA's CPU backend runs
the weight-gradient convolution inside a conditional on a slow path (the forward convolution
is unaffected), the same family as jax-ml/jax#12868 (convolutions in loop bodies).
"""

import time

import jax
import jax.numpy as jnp
from jax import lax


def conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def kernel_grad(x, w):
  return jax.grad(lambda k: conv(x, k).sum())(w)


def main():
  x = jnp.ones((32, 28, 28, 3))
  w = jnp.full((3, 3, 3, 32), 0.01)
  cases = {
      'forward': (jax.jit(conv), (x, w)),
      'forward in cond': (jax.jit(lambda p, x, w: lax.cond(p, lambda: 2 * conv(x, w),
                                                            lambda: conv(x, w))), (False, x, w)),
      'kernel gradient': (jax.jit(kernel_grad), (x, w)),
      'kernel gradient in cond': (jax.jit(lambda p, x, w: lax.cond(
          p, lambda: kernel_grad(x, w), lambda: w)), (True, x, w)),
  }
  for name, (fn, args) in cases.items():
    jax.block_until_ready(fn(*args))
    best = float('inf')
    for _ in range(3):
      start = time.perf_counter()
      for _ in range(20):
        out = fn(*args)
      jax.block_until_ready(out)
      best = min(best, (time.perf_counter() - start) / 20)
    print(f'{name:<25}{1e3 * best:8.2f} ms')


if __name__ == '__main__':
  main()
