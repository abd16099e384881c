"""The benchmark, one module per part: wrk (the load generator), procstat (/proc CPU and RSS),
inputs (stored models and request bodies), inprocess (timing without HTTP), http (servers and
the sweep), profiling (py-spy), targets, report, plots; peers (other model servers on the same
model). `python -m load_tests.bench` runs `make bench`, `python -m load_tests.bench.peers`
`make bench-peers`."""
