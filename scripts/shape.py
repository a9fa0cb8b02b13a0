"""scripts/shape.py ROOT: Shape of a Rust crate tree: files over 600 lines, functions over 80 lines, and
import cycles between modules (by `use crate::a::b` and `crate::a::b::` paths)."""
import os, re, sys, collections
root = sys.argv[1]
src = os.path.join(root, 'broker/src')
files = {}
for d, _, fs in os.walk(src):
    for f in fs:
        if f.endswith('.rs'):
            p = os.path.join(d, f)
            files[os.path.relpath(p, src)] = open(p).read()
def non_test_lines(text):
    # Drop a trailing #[cfg(test)] mod tests { ... } block.
    m = re.search(r'\n#\[cfg\(test\)\]\s*\n(mod tests|#\[path)', text)
    return text[:m.start()] if m else text
big = sorted(((len(non_test_lines(t).splitlines()), f) for f, t in files.items() if not f.endswith('_tests.rs')), reverse=True)
print("files over 600 lines (non-test):", [(f, n) for n, f in big if n > 600])
# functions over 80 lines: find `fn name(` at line start (indented) and match braces.
long_fns = []
for f, t in files.items():
    if f.endswith('_tests.rs'): continue
    body = non_test_lines(t)
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r'\s*(pub(\([^)]*\))?\s+)?(async\s+)?fn\s+(\w+)', lines[i])
        if m and not lines[i].strip().endswith(';'):
            depth, started, j = 0, False, i
            while j < len(lines):
                depth += lines[j].count('{') - lines[j].count('}')
                if '{' in lines[j]: started = True
                if started and depth <= 0: break
                j += 1
            n = j - i + 1
            if n > 80: long_fns.append((n, f, m.group(4)))
            i = j + 1 if started else i + 1
        else:
            i += 1
print("functions over 80 lines:", len(long_fns), sorted(long_fns, reverse=True)[:30])
# module graph
def mod_of(f):
    p = f[:-3]
    if p.endswith('/mod'): p = p[:-4]
    if p == 'lib': return ''
    return p.replace('/', '::')
mods = {mod_of(f): t for f, t in files.items() if not f.endswith('_tests.rs')}
graph = collections.defaultdict(set)
for m, t in mods.items():
    body = non_test_lines(t)
    for u in re.findall(r'crate::((?:\w+::)*\w+)', body):
        parts = u.split('::')
        # longest prefix that is a module
        target = None
        for k in range(len(parts), 0, -1):
            cand = '::'.join(parts[:k])
            if cand in mods: target = cand; break
        if target and target != m and not m.startswith(target + '::') and not target.startswith(m + '::'):
            graph[m].add(target)
    # `super::x` inside a module
    parent = m.rsplit('::', 1)[0] if '::' in m else ''
    for u in re.findall(r'\bsuper::(\w+)', body):
        cand = (parent + '::' + u) if parent else u
        if cand in mods and cand != m: graph[m].add(cand)
# top-level cycles: collapse to first segment? report SCCs at module level
index, low, stack, on, sccs, idx = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)
def strong(v):
    index[v] = low[v] = idx[0]; idx[0] += 1; stack.append(v); on.add(v)
    for w in graph[v]:
        if w not in index: strong(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(sorted(comp))
for v in list(mods):
    if v not in index: strong(v)
print("modules in import cycles:", sum(len(c) for c in sccs), "in", len(sccs), "groups")
for c in sccs: print("  ", len(c), c[:12], "..." if len(c) > 12 else "")
