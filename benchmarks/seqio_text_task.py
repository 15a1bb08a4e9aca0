"""A plain SeqIO text task for the benchmark's `seqio.scripts.cache_tasks_main` baseline.

The corpus (one document chunk per line) comes from $TAPESTRY_BENCH_CORPUS; the
vocabulary is the project's. Imported by cache_tasks_main via --module_import.
"""
import os

import seqio
import tensorflow as tf

from tasks import vocabulary

TASK = "tapestry_bench_seqio_text"

if TASK not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
        TASK,
        source=seqio.TextLineDataSource({"train": os.environ.get("TAPESTRY_BENCH_CORPUS", "/nonexistent")}),
        preprocessors=[
            lambda ds: ds.map(lambda line: {"targets": line}),
            seqio.preprocessors.tokenize,
            seqio.CacheDatasetPlaceholder(),
        ],
        output_features={"targets": seqio.Feature(vocabulary.get_vocabulary(), add_eos=False, dtype=tf.int32)},
    )
