"""The pipeline machinery: stages and their connections, pipelines, the quantum graph, running
quanta (in this process, on a local pool, on Dask), progress and provenance."""
