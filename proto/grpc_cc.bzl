"""Generates C++ messages and gRPC stubs with Debian's protoc and grpc_cpp_plugin (offline, no rules_proto)."""

def cc_grpc_library(name, srcs, visibility = None):
    """A cc_library `name` holding the .pb and .grpc.pb code of every .proto in srcs.

    Files import each other by their workspace path ("proto/common.proto"); include the outputs the same
    way ("proto/admin.grpc.pb.h").
    """
    outs = []
    for src in srcs:
        base = src[:-len(".proto")]
        outs += [base + ".pb.h", base + ".pb.cc", base + ".grpc.pb.h", base + ".grpc.pb.cc"]
    native.genrule(
        name = name + "_gen",
        srcs = srcs,
        outs = outs,
        cmd = " ".join([
            "/usr/bin/protoc",
            "-I.",
            "--cpp_out=$(GENDIR)",
            "--grpc_out=$(GENDIR)",
            "--plugin=protoc-gen-grpc=/usr/bin/grpc_cpp_plugin",
        ] + ["$(location %s)" % src for src in srcs]),
    )
    native.cc_library(
        name = name,
        srcs = [o for o in outs if o.endswith(".cc")],
        hdrs = [o for o in outs if o.endswith(".h")],
        copts = ["-Wno-unused-parameter"],
        deps = ["//third_party:grpc"],
        visibility = visibility,
    )
