"""mmjax: multi-modal classification in JAX/Flax that keeps every modality pulling its weight.

Gradient Blending (Wang, Tran, Feiszli, CVPR 2020) and balanced multi-modal learning
(Wu, Jastrzebski, Cho, Geras, ICML 2022) over late-fusion and MMTM mid-fusion networks.
"""

from mmjax.train import Trainer, train_and_evaluate

__version__ = '0.1.0'
__all__ = ['Trainer', 'train_and_evaluate', '__version__']
