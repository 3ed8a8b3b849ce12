#!/bin/sh
echo "coverage reports are unavailable in the offline build (third_party/remote_coverage_tools is a stub)" >&2
exit 1
