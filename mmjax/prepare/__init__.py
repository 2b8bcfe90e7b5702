"""``mmjax prepare``: the raw files a user has -> record data sets mmjax reads through Grain.

``mmjax prepare NAME --raw DIR --out DIR [--workers N] [--option KEY=VALUE ...]`` lists the
examples of data set ``NAME`` in the raw folder, decodes them with the literature's
preprocessing in worker processes and writes ArrayRecord shards per split, resumably, with a
report of every file that could not be decoded (:mod:`mmjax.prepare.core`). One module per data
set registers its preparer (:func:`register_preparer`) and its data set (``mmjax.data.register``)
that reads the prepared folder (:func:`prepared_dataset`). See ``docs/datasets.md``.
"""

from mmjax.prepare.core import (Example, PreparedSource, PreparerEntry, PrepareResult,
                                open_prepared, parse_record, prepare, prepared_dataset,
                                read_labels, read_metadata, register_preparer,
                                registered_preparers, serialize_record)
# The data sets register their preparers (and read data sets) on import.
# pylint: disable-next=wrong-import-order
from mmjax.prepare import ave, crema_d, kinetics_sounds, mnist, modelnet40  # noqa: F401


__all__ = ['Example', 'PrepareResult', 'PreparedSource', 'PreparerEntry', 'open_prepared',
           'parse_record', 'prepare', 'prepared_dataset', 'read_labels', 'read_metadata',
           'register_preparer', 'registered_preparers', 'serialize_record']
