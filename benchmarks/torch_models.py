"""The architectures of :mod:`mmjax.models` in PyTorch, to time a train step against mmjax's.

Built from a run's ``config.model`` (late fusion or MMTM over ``mlp``, ``cnn`` or ``resnet18``
encoders) with the same layer shapes as :mod:`mmjax.models.encoders` (convs padded by
``kernel // 2``, the CIFAR-stem ResNet-18, MMTM squeeze width ``K * sum C / ratio``). The step:
forward, the vanilla objective (late fusion: the fused loss plus linear probes on detached
features; MMTM: every branch's loss), backward, the config's optimizer (Adam or SGD with
momentum). Imported by ``benchmarks/accelerator.py`` only where torch is installed.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mmjax import train


class DenseStage(nn.Module):

  def __init__(self, inputs: int, features: int, dropout: float):
    super().__init__()
    self.dense, self.dropout = nn.Linear(inputs, features), nn.Dropout(dropout)

  def forward(self, x):
    return self.dropout(F.relu(self.dense(x.flatten(1))))


class ConvStage(nn.Module):

  def __init__(self, inputs: int, features: int, kernel: int = 3, stride: int = 1,
               pool: bool = False):
    super().__init__()
    self.conv = nn.Conv2d(inputs, features, kernel, stride, padding=kernel // 2)
    self.pool = pool

  def forward(self, x):
    x = F.relu(self.conv(x))
    return F.max_pool2d(x, 3, 2, 1) if self.pool else x


class BasicBlock(nn.Module):

  def __init__(self, inputs: int, features: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(inputs, features, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(features)
    self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(features)
    self.shortcut = nn.Identity()
    if stride != 1 or inputs != features:
      self.shortcut = nn.Sequential(nn.Conv2d(inputs, features, 1, stride, bias=False),
                                    nn.BatchNorm2d(features))

  def forward(self, x):
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return F.relu(self.shortcut(x) + y)


class Encoder(nn.Module):
  """Staged encoder: ``stages`` (an ``nn.ModuleList``), ``channels`` per stage, ``embed``."""

  def __init__(self, cfg, input_shape):
    super().__init__()
    name = cfg['name']
    in_channels = input_shape[-1] if len(input_shape) == 3 else 1
    if name == 'mlp':
      widths = [int(np.prod(input_shape)), *cfg['hidden']]
      self.stages = nn.ModuleList(DenseStage(a, b, cfg['dropout'])
                                  for a, b in zip(widths[:-1], widths[1:]))
      self.channels = list(cfg['hidden'])
    elif name == 'cnn':
      self.stages = nn.ModuleList([ConvStage(in_channels, 32, 5, pool=True), ConvStage(32, 32),
                                   ConvStage(32, 64, stride=2), ConvStage(64, 64)])
      self.channels = [32, 32, 64, 64]
    elif name == 'resnet18':
      w = cfg['width']
      stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w),
                           nn.ReLU())
      layers = [nn.Sequential(BasicBlock(a, b, s), BasicBlock(b, b, 1))
                for a, b, s in ((w, w, 1), (w, 2 * w, 2), (2 * w, 4 * w, 2), (4 * w, 8 * w, 2))]
      self.stages = nn.ModuleList([stem, *layers])
      self.channels = [w, w, 2 * w, 4 * w, 8 * w]
    else:
      raise ValueError(f'no PyTorch version of encoder {name!r}')
    self.head = nn.Linear(self.channels[-1], cfg['features'])

  def embed(self, x):
    return self.head(x.mean(dim=(2, 3)) if x.ndim == 4 else x)

  def forward(self, x):
    for stage in self.stages:
      x = stage(x)
    return self.embed(x)


class LateFusion(nn.Module):

  def __init__(self, model_cfg, input_shapes, num_classes):
    super().__init__()
    self.modalities = list(input_shapes)
    self.encoders = nn.ModuleDict({m: Encoder(model_cfg['encoders'][m], input_shapes[m])
                                   for m in self.modalities})
    features = {m: model_cfg['encoders'][m]['features'] for m in self.modalities}
    width = (sum(features.values()) if model_cfg.get('fusion', 'concat') == 'concat'
             else features[self.modalities[0]])
    layers = []
    for hidden in model_cfg.get('fused_hidden', ()):
      layers += [nn.Linear(width, hidden), nn.ReLU()]
      width = hidden
    self.fused = nn.Sequential(nn.Dropout(model_cfg.get('fused_dropout', 0.0)), *layers,
                               nn.Linear(width, num_classes))
    self.heads = nn.ModuleDict({m: nn.Linear(features[m], num_classes) for m in self.modalities})
    self.concat = model_cfg.get('fusion', 'concat') == 'concat'

  def forward(self, inputs):
    f = {m: self.encoders[m](inputs[m]) for m in self.modalities}
    fused = torch.cat([f[m] for m in self.modalities], -1) if self.concat else sum(f.values())
    return {'fused': self.fused(fused), **{m: self.heads[m](f[m].detach()) for m in f}}


class MMTMModel(nn.Module):

  def __init__(self, model_cfg, input_shapes, num_classes):
    super().__init__()
    self.modalities = list(input_shapes)
    self.encoders = nn.ModuleDict({m: Encoder(model_cfg['encoders'][m], input_shapes[m])
                                   for m in self.modalities})
    num_stages = min(len(e.stages) for e in self.encoders.values())
    self.where = list(model_cfg.get('mmtm_stages') or range(max(0, num_stages - 3), num_stages))
    ratio = model_cfg.get('mmtm_ratio', 4)
    self.squeeze, self.excite = nn.ModuleList(), nn.ModuleList()
    for i in self.where:
      channels = {m: self.encoders[m].channels[i] for m in self.modalities}
      width = max(1, len(channels) * sum(channels.values()) // ratio)
      self.squeeze.append(nn.Linear(sum(channels.values()), width))
      self.excite.append(nn.ModuleDict({m: nn.Linear(width, c) for m, c in channels.items()}))
    self.heads = nn.ModuleDict({m: nn.Linear(model_cfg['encoders'][m]['features'], num_classes)
                                for m in self.modalities})

  def forward(self, inputs):
    x = dict(inputs)
    for i in range(max(self.where) + 1):
      x = {m: self.encoders[m].stages[i](x[m]) for m in self.modalities}
      if i in self.where:
        j = self.where.index(i)
        squeezes = [x[m].mean(dim=(2, 3)) if x[m].ndim == 4 else x[m] for m in self.modalities]
        hidden = F.relu(self.squeeze[j](torch.cat(squeezes, -1)))
        for m in self.modalities:
          scale = torch.sigmoid(self.excite[j][m](hidden))
          x[m] = x[m] * (scale[:, :, None, None] if x[m].ndim == 4 else scale)
    logits = {}
    for m in self.modalities:
      h = x[m]
      for stage in self.encoders[m].stages[max(self.where) + 1:]:
        h = stage(h)
      logits[m] = self.heads[m](self.encoders[m].embed(h))
    return {'fused': sum(logits.values()) / len(logits), **logits}


def _to_torch(batch):
  inputs = {}
  for m, x in batch['inputs'].items():
    x = torch.from_numpy(np.array(x))
    inputs[m] = x.permute(0, 3, 1, 2).contiguous() if x.ndim == 4 else x
  return inputs, torch.from_numpy(np.asarray(batch['label']).astype(np.int64))


def time_vanilla_step(config, steps: int, rounds: int, warmup: int = 3) -> float:
  """Best ms per train step (over ``rounds`` rounds of ``steps``) of the PyTorch model."""
  torch.manual_seed(0)
  trainer = train.Trainer(config)
  batches = [_to_torch(trainer.next_batch()) for _ in range(min(steps, trainer.steps_per_epoch))]
  shapes = {m: tuple(x.shape[1:]) for m, x in trainer.next_batch()['inputs'].items()}
  model_cfg = config.model.to_dict()
  cls = MMTMModel if model_cfg['name'] == 'mmtm' else LateFusion
  model = cls(model_cfg, shapes, trainer.dataset.num_classes).train()
  opt = config.optimizer
  if opt.name == 'sgd':
    optimizer = torch.optim.SGD(model.parameters(), lr=opt.learning_rate,
                                momentum=opt.get('momentum', 0.0))
  else:
    optimizer = torch.optim.Adam(model.parameters(), lr=opt.learning_rate)
  mmtm = cls is MMTMModel

  def step(i):
    inputs, labels = batches[i % len(batches)]
    outputs = model(inputs)
    heads = [h for h in outputs if h != 'fused'] if mmtm else list(outputs)
    loss = sum(F.cross_entropy(outputs[h], labels) for h in heads)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()

  for i in range(warmup):
    step(i)
  best = float('inf')
  for _ in range(rounds):
    start = time.perf_counter()
    for i in range(steps):
      step(i)
    best = min(best, (time.perf_counter() - start) / steps)
  return 1e3 * best
