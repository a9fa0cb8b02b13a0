#!/usr/bin/env python3
"""Sums a heaptrack peak flamegraph (heaptrack_print --print-flamegraph F
--flamegraph-cost-type peak) by the innermost frame of messs or RocksDB on each stack, and
prints the bytes per connection each holds at the peak: the byte table of an idle
connection in docs/PERFORMANCE.md.   usage: idle_bytes.py FLAMEGRAPH CONNECTIONS"""
import collections
import re
import sys


def owner(frames):
    """The innermost frame that is ours or RocksDB's, without hashes."""
    for frame in reversed(frames):
        if re.search(r"messs_|rocksdb", frame):
            frame = re.sub(r"::h[0-9a-f]{16}", "", frame)
            frame = frame.replace("::_$u7b$$u7b$closure$u7d$$u7d$", "::{closure}")
            return frame.replace("$LT$", "<").replace("$GT$", ">")
    return "(elsewhere: " + frames[-1][:60] + ")"


def main():
    path, connections = sys.argv[1], int(sys.argv[2])
    by_owner = collections.Counter()
    for line in open(path, encoding="utf-8", errors="replace"):
        stack, _, cost = line.rstrip().rpartition(" ")
        if stack:
            by_owner[owner(stack.split(";"))] += int(cost)
    total = sum(by_owner.values())
    print(f"heap at the peak: {total} bytes, {total / connections:.0f} per connection")
    print("| B per connection | held by (innermost frame of ours or RocksDB's) |")
    print("|---|---|")
    for name, cost in by_owner.most_common():
        if cost / connections < 5:
            break
        print(f"| {cost / connections:.0f} | `{name[:110]}` |")


if __name__ == "__main__":
    main()
