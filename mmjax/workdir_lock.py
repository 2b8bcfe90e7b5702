"""One training process per run directory: an exclusive lock on ``<workdir>/workdir.lock``.

The lock is ``fcntl.flock`` on the open lock file, so the operating system releases it when its
process ends, however it ends (a ``kill -9`` included): the next run takes it over without any
stale-lock cleanup. The holder writes ``host=<hostname> pid=<pid>`` into the file, which is what
a refused process names. (``flock`` works on local file systems; network file systems that do
not support it refuse the lock with an ``OSError``, reported as a clear error.)
"""

from __future__ import annotations

import fcntl
import os
import socket

from mmjax.errors import UserError

LOCK_FILE = 'workdir.lock'


class WorkdirLock:
  """The held lock of a run directory; :meth:`release` (or process exit) gives it back."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    try:
      os.makedirs(workdir, exist_ok=True)
      self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise UserError(f'workdir {workdir!r} is not a writable directory: {e}') from None
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(self._fd, 256, 0).decode('utf-8', 'replace').strip() or 'unknown holder'
      os.close(self._fd)
      raise UserError(f'workdir {workdir!r} is in use by another mmjax run ({holder}); wait for '
                       'it to finish or choose a new --workdir.') from None
    except OSError as e:
      os.close(self._fd)
      raise UserError(f'workdir {workdir!r}: cannot lock {self.path} ({e}); the file system '
                       'must support flock.') from None
    os.ftruncate(self._fd, 0)
    os.pwrite(self._fd, f'host={socket.gethostname()} pid={os.getpid()}\n'.encode(), 0)

  def release(self) -> None:
    """Empties the lock file and releases the lock (the file stays, for the next run)."""
    if self._fd is None:
      return
    os.ftruncate(self._fd, 0)
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None
