"""Transfer service: transfer jobs, the worker that pulls from holders and pushes to recipients."""
