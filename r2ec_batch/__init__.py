"""The Spark side of the product: sessions, Delta tables, the model registry, input readers,
storage locations and the shared command-line contract.

Installed as one namespace so that nothing collides on a shared cluster: `r2ec_batch` holds this
library, and the repository's top-level `jobs/`, `udfs/` and `schemas/` are installed as
`r2ec_batch.jobs`, `r2ec_batch.udfs` and `r2ec_batch.schemas` (see pyproject.toml). The engine,
which has no Spark in it, is the separate package `r2ec`.
"""
