"""A certification run: the pipeline over many instances, streamed to disk with progress."""

from __future__ import annotations

from collections.abc import Sequence

from tqdm import tqdm

from nncert.verifier.certify import Instance, Pipeline
from nncert.verifier.results import ResultsFile


def certify_instances(pipeline: Pipeline, instances: Sequence[Instance], results: ResultsFile,
                      progress: bool = True) -> ResultsFile:
    """Runs ``pipeline`` on ``instances``, adding each chunk's rows to ``results`` as it finishes.

    On Ctrl-C the rows finished so far are already on disk; the interrupt is re-raised.
    """
    bar = tqdm(total=len(instances), unit="sample", disable=not progress, leave=False,
               desc="certify " + ",".join(pipeline.domains))
    try:
        for rows in pipeline.run(instances):
            results.add([row.to_json() for row in rows])
            bar.update(len({row.index for row in rows}))
            bar.set_postfix(_postfix(results))
    finally:
        bar.close()
    return results


def _postfix(results: ResultsFile) -> dict[str, str]:
    return {domain: f"{s['certified']}/{s['n']}" for domain, s in results.summary.items()}
