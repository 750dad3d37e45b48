// Included (`include!`) by xtask, which installs this bpf-linker release (`cargo xtask setup`),
// and by netcon-user's build script, which links the eBPF program with it: one version for both.

/// The bpf-linker release that links the eBPF program.
const BPF_LINKER_VERSION: &str = "0.13.0";
