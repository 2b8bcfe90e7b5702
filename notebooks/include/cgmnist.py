# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %%
import jax
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from configs import cgmnist
from mmjax import report, train


def config_for(arg):
  """The cgmnist config ``arg`` (``method=...``), small when SMOKE."""
  config = cgmnist.get_config(arg + (',smoke' if SMOKE else ''))
  config.num_epochs = NUM_EPOCHS
  config.progress_bar = not SMOKE
  return config


print('JAX', jax.__version__, 'on', jax.devices())
