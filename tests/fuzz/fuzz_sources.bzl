"""fuzz_sources: the C++ sources and headers of targets and their dependencies, as runfiles.

The fuzz tests compile project sources with clang++-14 themselves. The daemon's files are private
to //daemon (not exported), but its public targets are not: an aspect walks their deps and
collects the srcs and hdrs of each cc rule it meets.
"""

_SourcesInfo = provider(fields = ["files"])

def _collect_impl(target, ctx):
    direct = []
    for attr in ("srcs", "hdrs"):
        for f in getattr(ctx.rule.files, attr, []):
            if f.is_source:
                direct.append(f)
    transitive = [d[_SourcesInfo].files for d in getattr(ctx.rule.attr, "deps", []) if _SourcesInfo in d]
    return [_SourcesInfo(files = depset(direct, transitive = transitive))]

_collect = aspect(implementation = _collect_impl, attr_aspects = ["deps"])

def _fuzz_sources_impl(ctx):
    files = depset(transitive = [t[_SourcesInfo].files for t in ctx.attr.targets])
    return [DefaultInfo(files = files, runfiles = ctx.runfiles(transitive_files = files))]

fuzz_sources = rule(
    implementation = _fuzz_sources_impl,
    attrs = {"targets": attr.label_list(aspects = [_collect])},
)
