"""GPU tests compare the kernels with the PyTorch path in true fp32.

By default Hopper GPUs run fp32 convolutions (cuDNN) and triton's fp32 `tl.dot` (used by
mamba-ssm's Mamba2/SSD kernels) in TF32, whose 10-bit mantissa alone gives ~1e-3 relative
differences.  That is a speed setting of training, not a property of the code under test, so
these tests turn it off (measured with TF32 on, H100: SSD 1.6e-3, Mamba2 mixer grads 2.4e-3,
encoder padding 2.7e-4; each test passes at < 1e-4 with it off).
"""

import os

os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")  # read when triton compiles a kernel

import torch  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
