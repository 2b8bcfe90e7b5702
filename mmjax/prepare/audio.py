"""Audio decoding and the audio features of the audio-visual balancing literature, in numpy/scipy.

Three features, each the one a public code base of that literature computes (no librosa, no
torchaudio: these are ports, checked in ``tests/test_audio_video.py`` against values computed
independently):

- :func:`ogm_log_spectrogram`: CREMA-D in OGM-GE (Peng et al., CVPR 2022; GeWu-Lab/OGM-GE_CVPR2022
  ``dataset/CramedDataset.py``, the loader AGM, ReconBoost and InfoReg copy): the waveform at
  22,050 Hz, tiled 3x and cut to 3 s, clipped to [-1, 1], a librosa STFT (n_fft 512, hop 353,
  periodic Hann window, centred frames with reflect padding: librosa < 0.10's defaults, which
  that 2022 code ran with) and ``log(|S| + 1e-7)``: 257 x 188.
- :func:`ast_fbank`: Kinetics-Sounds in OGM-GE (``data/KineticSound/process_audio.py``): the mean
  removed, Kaldi filter-bank features (:func:`kaldi_fbank`, a port of
  ``torchaudio.compliance.kaldi.fbank``) with 128 mel bins, 25 ms Hann windows every 10 ms,
  zero-padded or cut to 1,024 frames, then ``(x + 4.503877) / (2 * 5.141276)`` (AudioSet
  statistics of the AST recipe): 1024 x 128.
- :func:`pmr_spectrogram`: AVE in PMR (Fan et al., CVPR 2023; fanyunfeng-bit/Modal-Imbalance-PMR
  ``data/AVE/video_preprocessing.py``; OGM-GE publishes no AVE audio script): 16 kHz, tiled and
  cut to 10 s, clipped, ``scipy.signal.spectrogram(nperseg=512, noverlap=353)``, log, per-clip
  standardisation: 257 x 1004.

:func:`load_audio` decodes any container PyAV (FFmpeg) reads, WAV, FLV, MP4 with AAC, ..., to
float samples in [-1, 1] and resamples with ``scipy.signal.resample_poly`` (the reference code
resamples with librosa's or FFmpeg's resampler: the same band-limited resampling up to filter
details, so features agree to the resampler's tolerance, not bit for bit).
"""

from __future__ import annotations

import math

import numpy as np

#: AudioSet's fbank mean and standard deviation used by OGM-GE's Kinetics-Sounds script (AST).
AST_FBANK_MEAN = -4.503877
AST_FBANK_STD = 5.141276


def load_audio(path: str, sample_rate: int, *, channel: str | int = 'mean') -> np.ndarray:
  """The first audio stream of ``path`` as float32 mono samples at ``sample_rate``.

  Args:
    path: a file any FFmpeg demuxer reads (``.wav``, ``.flv``, ``.mp4``, ...).
    sample_rate: the rate to resample to (``resample_poly`` by the reduced ratio).
    channel: ``'mean'`` averages the channels (``librosa.load``'s mono mix); an integer keeps
      that channel (``torchaudio.compliance.kaldi.fbank`` reads channel 0 of a stereo file).

  Returns:
    float32 ``[N]``, integer formats scaled to [-1, 1) as librosa and torchaudio do.

  Raises:
    ValueError: the file has no audio stream or no samples; PyAV's errors for unreadable files.
  """
  # PyAV loads FFmpeg (about 30 ms): imported on first use, not at every `import mmjax`.
  import av  # pylint: disable=import-outside-toplevel
  with av.open(path) as container:
    if not container.streams.audio:
      raise ValueError(f'{path}: no audio stream.')
    stream = container.streams.audio[0]
    chunks = []
    for frame in container.decode(stream):
      planar = frame.to_ndarray()
      channels = len(frame.layout.channels)
      if not frame.format.is_planar:  # interleaved: [1, n * channels] -> [channels, n]
        planar = planar.reshape(-1, channels).T
      chunks.append(_to_float(planar))
      rate = frame.sample_rate
  if not chunks:
    raise ValueError(f'{path}: the audio stream holds no samples.')
  samples = np.concatenate(chunks, axis=1)
  mono = samples.mean(axis=0) if channel == 'mean' else samples[int(channel)]
  return resample(mono, rate, sample_rate)


def _to_float(samples: np.ndarray) -> np.ndarray:
  """PCM samples as float32 in [-1, 1): integers divided by 2^(bits - 1), floats as they are."""
  if samples.dtype.kind == 'f':
    return samples.astype(np.float32)
  if samples.dtype == np.uint8:  # 8-bit PCM is offset binary
    return (samples.astype(np.float32) - 128) / 128
  return samples.astype(np.float32) / float(2 ** (8 * samples.dtype.itemsize - 1))


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
  """``samples`` at ``rate`` Hz resampled to ``target_rate`` Hz with ``resample_poly`` (float32)."""
  if rate == target_rate:
    return samples.astype(np.float32)
  import scipy.signal  # pylint: disable=import-outside-toplevel  (1 s to import; decoding only)
  divisor = math.gcd(int(rate), int(target_rate))
  return scipy.signal.resample_poly(samples, target_rate // divisor, rate // divisor
                                    ).astype(np.float32)


def tile_to_length(samples: np.ndarray, repeats: int, length: int) -> np.ndarray:
  """``np.tile(samples, repeats)[:length]`` clipped to [-1, 1] (the reference loaders' fixed-length
  clip; a clip still shorter than ``length`` is tiled further so the shape is always ``length``)."""
  if not len(samples):
    raise ValueError('an empty waveform cannot be tiled to a fixed length.')
  repeats = max(repeats, math.ceil(length / len(samples)))
  return np.clip(np.tile(samples, repeats)[:length], -1.0, 1.0)


def stft_magnitude(samples: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
  """``|librosa.stft(samples, n_fft, hop_length)|`` with librosa < 0.10's defaults.

  A periodic Hann window of ``n_fft`` samples, frames centred on ``t * hop_length`` (the signal
  reflect-padded by ``n_fft // 2`` on each side), no normalisation.

  Returns:
    float32 ``[1 + n_fft // 2, 1 + len(samples) // hop_length]`` (frequency, time).
  """
  padded = np.pad(np.asarray(samples, np.float64), n_fft // 2, mode='reflect')
  frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
  return np.abs(np.fft.rfft(frames * window, axis=1)).T.astype(np.float32)


def ogm_log_spectrogram(samples: np.ndarray, sample_rate: int = 22050, seconds: int = 3,
                        n_fft: int = 512, hop_length: int = 353) -> np.ndarray:
  """OGM-GE's CREMA-D audio input (``dataset/CramedDataset.py`` l.57-62).

  ``samples`` (already at ``sample_rate``) tiled ``seconds`` times and cut to ``seconds`` s,
  clipped to [-1, 1], then ``log(|STFT| + 1e-7)`` (:func:`stft_magnitude`); not normalised.

  Returns:
    float32 ``[1 + n_fft // 2, 1 + sample_rate * seconds // hop_length]``: 257 x 188 by default.
  """
  clip = tile_to_length(samples, seconds, sample_rate * seconds)
  return np.log(stft_magnitude(clip, n_fft, hop_length) + 1e-7).astype(np.float32)


def pmr_spectrogram(samples: np.ndarray, sample_rate: int = 16000, seconds: int = 10
                    ) -> np.ndarray:
  """PMR's AVE audio input (``data/AVE/video_preprocessing.py``, ``extractWav_SE``).

  ``samples`` (at ``sample_rate``) tiled and cut to ``seconds`` s, clipped to [-1, 1],
  ``scipy.signal.spectrogram(x, sample_rate, nperseg=512, noverlap=353)`` (its defaults: a Tukey
  window, constant detrend, power spectral density), ``log(S + 1e-7)``, then standardised with the
  clip's own mean and standard deviation (``+ 1e-9``).

  Returns:
    float32 ``[257, (sample_rate * seconds - 512) // 159 + 1]``: 257 x 1004 by default.
  """
  import scipy.signal  # pylint: disable=import-outside-toplevel  (1 s to import; decoding only)
  clip = tile_to_length(samples, 10, sample_rate * seconds)
  _, _, power = scipy.signal.spectrogram(clip, sample_rate, nperseg=512, noverlap=353)
  log_power = np.log(np.abs(power) + 1e-7)
  return ((log_power - log_power.mean()) / (log_power.std() + 1e-9)).astype(np.float32)


def _kaldi_mel(frequency: np.ndarray) -> np.ndarray:
  """Kaldi's (HTK's) mel scale, ``1127 ln(1 + f / 700)``."""
  return 1127.0 * np.log1p(np.asarray(frequency, np.float64) / 700.0)


def kaldi_mel_banks(num_bins: int, padded_window_size: int, sample_rate: float,
                    low_freq: float = 20.0, high_freq: float = 0.0) -> np.ndarray:
  """Kaldi's triangular mel filters (``torchaudio.compliance.kaldi.get_mel_banks``, no VTLN).

  Triangles equally spaced on the mel scale between ``low_freq`` and ``high_freq`` (``<= 0``:
  that much below Nyquist), evaluated at the FFT bins' frequencies, plus a zero column for the
  Nyquist bin.

  Returns:
    float64 ``[num_bins, padded_window_size // 2 + 1]``.
  """
  num_fft_bins = padded_window_size // 2
  nyquist = 0.5 * sample_rate
  if high_freq <= 0.0:
    high_freq += nyquist
  mel_low, mel_high = _kaldi_mel(low_freq), _kaldi_mel(high_freq)
  delta = (mel_high - mel_low) / (num_bins + 1)
  index = np.arange(num_bins, dtype=np.float64)[:, None]
  left, center, right = (mel_low + index * delta, mel_low + (index + 1) * delta,
                         mel_low + (index + 2) * delta)
  mel = _kaldi_mel(sample_rate / padded_window_size * np.arange(num_fft_bins))[None, :]
  up = (mel - left) / (center - left)
  down = (right - mel) / (right - center)
  banks = np.maximum(0.0, np.minimum(up, down))
  return np.pad(banks, ((0, 0), (0, 1)))


def kaldi_fbank(waveform: np.ndarray, sample_rate: float, *, num_mel_bins: int = 128,
                frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0,
                preemphasis: float = 0.97, low_freq: float = 20.0) -> np.ndarray:
  """Log mel filter-bank energies as ``torchaudio.compliance.kaldi.fbank`` computes them with
  ``htk_compat=True, use_energy=False, window_type='hanning', dither=0.0`` and its other defaults.

  Frames of ``frame_length_ms`` every ``frame_shift_ms`` (``snip_edges``: only whole frames);
  per frame: the DC offset removed, pre-emphasis ``x[i] - 0.97 x[i-1]`` (``x[-1] := x[0]``), a
  symmetric Hann window, zero-padded to the next power of two, the power spectrum, the mel
  filters (:func:`kaldi_mel_banks`), ``log(max(e, float32 eps))``.

  Returns:
    float32 ``[frames, num_mel_bins]``.
  """
  waveform = np.asarray(waveform, np.float64)
  window_size = int(sample_rate * frame_length_ms * 0.001)
  window_shift = int(sample_rate * frame_shift_ms * 0.001)
  if len(waveform) < window_size:
    raise ValueError(f'{len(waveform)} samples are fewer than one {frame_length_ms} ms frame.')
  padded_size = 1 << (window_size - 1).bit_length()
  frames = np.lib.stride_tricks.sliding_window_view(waveform, window_size)[::window_shift]
  frames = frames - frames.mean(axis=1, keepdims=True)
  previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
  frames = frames - preemphasis * previous
  frames = frames * np.hanning(window_size)
  power = np.abs(np.fft.rfft(frames, n=padded_size, axis=1)) ** 2
  energies = power @ kaldi_mel_banks(num_mel_bins, padded_size, sample_rate, low_freq).T
  return np.log(np.maximum(energies, np.finfo(np.float32).eps)).astype(np.float32)


def ast_fbank(samples: np.ndarray, sample_rate: int = 16000, target_frames: int = 1024
              ) -> np.ndarray:
  """OGM-GE's Kinetics-Sounds audio input (``data/KineticSound/process_audio.py``).

  The waveform's mean removed, :func:`kaldi_fbank` (128 mel bins, 10 ms shift), zero-padded or
  cut to ``target_frames`` frames, then ``(x - AST_FBANK_MEAN) / (2 * AST_FBANK_STD)``.

  Returns:
    float32 ``[target_frames, 128]``.
  """
  samples = np.asarray(samples, np.float64)
  fbank = kaldi_fbank(samples - samples.mean(), sample_rate)
  fbank = fbank[:target_frames]
  fbank = np.pad(fbank, ((0, target_frames - len(fbank)), (0, 0)))
  return ((fbank - AST_FBANK_MEAN) / (2 * AST_FBANK_STD)).astype(np.float32)
