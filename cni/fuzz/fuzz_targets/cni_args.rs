//! `CNI_ARGS` as runtimes write it (`K=V;K=V`). Invariant: no panic; the
//! pod named is the last non-empty `K8S_POD_NAMESPACE` and `K8S_POD_NAME`,
//! by a model that reads the pairs another way (from the end).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_cni::kubernetes::PodRef;

fn last(args: &str, key: &str) -> Option<String> {
    args.rsplit(';')
        .filter_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .find(|v| !v.is_empty())
        .map(str::to_string)
}

fuzz_target!(|args: &str| {
    let model = last(args, "K8S_POD_NAMESPACE")
        .zip(last(args, "K8S_POD_NAME"))
        .map(|(namespace, name)| PodRef { namespace, name });
    assert_eq!(PodRef::from_cni_args(args), model);
});
