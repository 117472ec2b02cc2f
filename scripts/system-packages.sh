#!/usr/bin/env bash
# The Debian packages the tests need beyond Python and Node.js: Go and protoc with the
# gRPC plugins and libraries for the Go client (clients/go, built in GOPATH mode), and
# Java 17 with Debian's gRPC Java for the Java client (clients/java), and Chromium for the
# console's browser tests (tests/console, driven by Playwright from PyPI). Run by
# `make test`: installs what is missing when run as root, else names it.
set -euo pipefail
PACKAGES=(
  golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev
  golang-google-protobuf-dev golang-google-genproto-dev golang-github-golang-protobuf-1-5-dev
  openjdk-17-jdk-headless libgrpc-java protobuf-compiler-grpc-java-plugin libprotobuf-java
  libnetty-java libperfmark-java libgoogle-gson-java libgeronimo-annotation-1.3-spec-java
  chromium fonts-dejavu-core
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "make test: the Go and Java clients' and the console's tests need these Debian packages (run as root to install them):" \
    "${missing[*]}" >&2
fi
