"""sqlstream benchmarks, side by side with raw SQLite, Redis Streams and SQLite queue libraries.

Run from the repository root::

    pip install -r benchmarks/requirements.txt   # peers; missing ones are reported as skipped
    apt-get install -y redis-server              # optional: the Redis baselines
    python -m benchmarks                         # full run -> benchmarks/RESULTS.md, results.json, chart.png
    python -m benchmarks --quick --out /tmp/b    # under two minutes (what CI runs)
    python -m benchmarks.layout                  # chunks table layout study -> benchmarks/LAYOUT.md
    python -m benchmarks.anatomy                 # where the time goes (diagnostic, prints only)

Modules: harness (rounds, statistics, results), peers (optional peers, private
redis-server), appends (W1, W2, W7), reads (W3), subscriptions (W4), wakeups (W5),
scale (W6), report (RESULTS.md, results.json, chart.png), layout, anatomy.
"""
