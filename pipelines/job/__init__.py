"""The whole job, without Dagster: sources -> mapping -> warehouse -> derived tables -> quality.

``run_pipeline`` is what ``passerelle run`` and ``passerelle demo`` call; the Dagster assets call the
same steps one by one (pipelines/defs/).
"""

from pipelines.job.pipeline import RunOptions, RunSummary, run_pipeline

__all__ = ["RunOptions", "RunSummary", "run_pipeline"]
