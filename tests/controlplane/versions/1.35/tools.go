//go:build tools

// Package controlplane pins the Kubernetes and etcd programs that build.sh compiles into the
// test control plane. The blank imports keep `go mod tidy` from dropping their dependencies;
// the build tag keeps this file out of every real build.
package controlplane

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
