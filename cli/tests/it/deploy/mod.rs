//! `deploy/`: the Kubernetes manifests rendered by kustomize (`kubectl kustomize`), validated
//! against the Kubernetes schemas and the vendored CRD schemas, checked against the binary's
//! flags and variables and the store's autoscaler query, and run as a kubelet would run them
//! (`simulation`); and the Grafana dashboard checked against docs/metrics.md.

mod dashboard;
mod keda;
mod kubelet;
mod names;
mod pod;
mod production;
mod render;
mod simulation;
mod validate;
