//! Which pods are captured and how: the node's defaults from the plugin configuration,
//! overridden per pod by Istio's annotations, as istio-cni reads them. Every value is
//! checked with the capture crate's own parser, so a bad annotation is refused naming it.

use crate::kube::Pod;
use crate::netconf::{CaptureConf, PluginConf};

/// `sidecar.istio.io/status`: the injector's record that it added the sidecar.
pub const SIDECAR_STATUS: &str = "sidecar.istio.io/status";
/// `sidecar.istio.io/inject`.
pub const INJECT: &str = "sidecar.istio.io/inject";
/// `sidecar.istio.io/interceptionMode`: REDIRECT, TPROXY or NONE.
pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
/// `traffic.sidecar.istio.io/includeOutboundIPRanges`.
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
/// `traffic.sidecar.istio.io/excludeOutboundIPRanges`.
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
/// `traffic.sidecar.istio.io/includeInboundPorts`.
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
/// `traffic.sidecar.istio.io/excludeInboundPorts`.
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
/// `traffic.sidecar.istio.io/includeOutboundPorts`.
pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
/// `traffic.sidecar.istio.io/excludeOutboundPorts`.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
/// `traffic.sidecar.istio.io/excludeInterfaces` (iptables backend).
pub const EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
/// `traffic.sidecar.istio.io/kubevirtInterfaces` (iptables backend).
pub const KUBEVIRT_INTERFACES: &str = "traffic.sidecar.istio.io/kubevirtInterfaces";

/// The sidecar's own inbound ports (agent status, health, Prometheus), never captured, as
/// istio-cni always adds them.
pub const SIDECAR_PORTS: &str = "15020,15021,15090";

/// What to do with a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Leave it alone, for this reason.
    Skip(String),
    /// Capture it with these options.
    Capture(Box<PodCapture>),
}

/// A pod's resolved capture options, in istio-iptables' flag values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCapture {
    /// The node defaults with the pod's annotations applied.
    pub capture: CaptureConf,
    /// `-c` (iptables).
    pub exclude_interfaces: String,
    /// `-k` (iptables).
    pub kubevirt_interfaces: String,
}

/// A bad annotation: which, its value, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pod {pod}: annotation {annotation}=\"{value}\": {reason}; fix or remove the annotation")]
pub struct AnnotationError {
    /// `namespace/name`.
    pub pod: String,
    /// The annotation's name.
    pub annotation: String,
    /// Its value.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Decides whether and how `pod` is captured.
pub fn decide(pod: &Pod, conf: &PluginConf) -> Result<Decision, AnnotationError> {
    let ns = &pod.metadata.namespace;
    if conf.exclude_namespaces.iter().any(|n| n == ns) {
        return Ok(Decision::Skip(format!("namespace {ns} is excluded")));
    }
    if pod.spec.host_network {
        return Ok(Decision::Skip("host network pod".into()));
    }
    if pod.annotation(INJECT).is_some_and(|v| v == "false") {
        return Ok(Decision::Skip(format!("{INJECT}=false")));
    }
    let sidecar = pod.annotation(SIDECAR_STATUS).is_some()
        || pod
            .spec
            .containers
            .iter()
            .any(|c| conf.sidecar_containers.contains(&c.name));
    if !sidecar {
        return Ok(Decision::Skip(format!(
            "no sidecar (no {SIDECAR_STATUS} annotation and no container named {})",
            conf.sidecar_containers.join(" or ")
        )));
    }
    if let Some(init) = pod
        .spec
        .init_containers
        .iter()
        .find(|c| conf.init_containers.contains(&c.name))
    {
        return Ok(Decision::Skip(format!(
            "its init container {} captures it",
            init.name
        )));
    }
    let mut c = conf.capture.clone();
    let bad = |annotation: &str, value: &str, reason: String| AnnotationError {
        pod: pod.key(),
        annotation: annotation.to_string(),
        value: value.to_string(),
        reason,
    };
    if let Some(mode) = pod.annotation(INTERCEPTION_MODE) {
        match mode {
            "NONE" => return Ok(Decision::Skip(format!("{INTERCEPTION_MODE}=NONE"))),
            "REDIRECT" | "TPROXY" => c.interception_mode = mode.to_string(),
            other => {
                return Err(bad(
                    INTERCEPTION_MODE,
                    other,
                    "must be REDIRECT, TPROXY or NONE".into(),
                ))
            }
        }
    }
    // Each annotation replaces the node's default, as in istio-cni.
    let fields: [(&str, &mut String); 6] = [
        (
            INCLUDE_OUTBOUND_IP_RANGES,
            &mut c.include_outbound_ip_ranges,
        ),
        (
            EXCLUDE_OUTBOUND_IP_RANGES,
            &mut c.exclude_outbound_ip_ranges,
        ),
        (INCLUDE_INBOUND_PORTS, &mut c.include_inbound_ports),
        (EXCLUDE_INBOUND_PORTS, &mut c.exclude_inbound_ports),
        (INCLUDE_OUTBOUND_PORTS, &mut c.include_outbound_ports),
        (EXCLUDE_OUTBOUND_PORTS, &mut c.exclude_outbound_ports),
    ];
    for (annotation, slot) in fields {
        if let Some(v) = pod.annotation(annotation) {
            *slot = v.trim().to_string();
        }
    }
    let out = PodCapture {
        capture: c,
        exclude_interfaces: pod
            .annotation(EXCLUDE_INTERFACES)
            .unwrap_or_default()
            .to_string(),
        kubevirt_interfaces: pod
            .annotation(KUBEVIRT_INTERFACES)
            .unwrap_or_default()
            .to_string(),
    };
    // Check every value now, with the parser the backends use, so an error names the
    // annotation the operator wrote rather than a flag they never saw.
    let args = out.capture_args();
    if let Err(e) = skiff_iptables::Capture::from_args(&args) {
        let annotation = match e.flag {
            "istio-service-cidr" => INCLUDE_OUTBOUND_IP_RANGES,
            "istio-service-exclude-cidr" => EXCLUDE_OUTBOUND_IP_RANGES,
            "istio-inbound-ports" => INCLUDE_INBOUND_PORTS,
            "istio-local-exclude-ports" => EXCLUDE_INBOUND_PORTS,
            "istio-outbound-ports" => INCLUDE_OUTBOUND_PORTS,
            "istio-local-outbound-ports-exclude" => EXCLUDE_OUTBOUND_PORTS,
            f => {
                return Err(bad(
                    "(node capture defaults)",
                    f,
                    format!("{e}: fix the plugin's capture configuration"),
                ))
            }
        };
        let value = pod.annotation(annotation).unwrap_or("(node default)");
        return Err(bad(annotation, value, e.reason));
    }
    Ok(Decision::Capture(Box::new(out)))
}

impl PodCapture {
    /// The shared capture flags, as `skiff ebpf enroll` and `skiff iptables` take them.
    pub fn capture_args(&self) -> skiff_iptables::CaptureArgs {
        let c = &self.capture;
        let mut exclude: Vec<&str> = Vec::new();
        for p in c
            .exclude_inbound_ports
            .split(',')
            .chain(SIDECAR_PORTS.split(','))
        {
            let p = p.trim();
            if !p.is_empty() && !exclude.contains(&p) {
                exclude.push(p);
            }
        }
        let exclude_inbound = exclude.join(",");
        skiff_iptables::CaptureArgs {
            envoy_port: c.outbound_port.to_string(),
            inbound_capture_port: c.inbound_port.to_string(),
            inbound_tunnel_port: c.tunnel_port.to_string(),
            proxy_uid: c.proxy_uid.clone(),
            proxy_gid: c.proxy_gid.clone(),
            inbound_ports: c.include_inbound_ports.clone(),
            inbound_exclude_ports: exclude_inbound,
            outbound_cidrs: c.include_outbound_ip_ranges.clone(),
            outbound_exclude_cidrs: c.exclude_outbound_ip_ranges.clone(),
            outbound_ports: c.include_outbound_ports.clone(),
            outbound_exclude_ports: c.exclude_outbound_ports.clone(),
            run_validation: false,
            probe_timeout: "5s".into(),
            probe_port: skiff_iptables::validation::PROBE_PORT.to_string(),
        }
    }

    /// `skiff iptables` arguments for the pod's namespace at `netns` (without the program
    /// name), so that what the plugin applies can be replayed by hand.
    pub fn iptables_args(&self, netns: &str) -> Vec<String> {
        let a = self.capture_args();
        let mut v: Vec<String> = [
            ("-p", a.envoy_port),
            ("-z", a.inbound_capture_port),
            ("-e", a.inbound_tunnel_port),
            ("-u", a.proxy_uid),
            ("-m", self.capture.interception_mode.clone()),
            ("-b", a.inbound_ports),
            ("-d", a.inbound_exclude_ports),
            ("-i", a.outbound_cidrs),
            ("-x", a.outbound_exclude_cidrs),
            ("-q", a.outbound_ports),
            ("-o", a.outbound_exclude_ports),
            ("-c", self.exclude_interfaces.clone()),
            ("-k", self.kubevirt_interfaces.clone()),
        ]
        .into_iter()
        .flat_map(|(f, v)| [f.to_string(), v])
        .collect();
        if let Some(g) = a.proxy_gid {
            v.extend(["-g".into(), g]);
        }
        if self.capture.dual_stack {
            v.push("--dual-stack".into());
        }
        v.extend(["--network-namespace".into(), netns.to_string()]);
        v
    }

    /// The eBPF-only options.
    pub fn ebpf_options(&self) -> skiff_ebpf::PodOptions {
        skiff_ebpf::PodOptions {
            mark: self.capture.proxy_mark,
            events: false,
            sk_msg: self.capture.sk_msg,
        }
    }
}

/// The annotations of a pod given as `name=value` lines (for tests and fuzzing).
pub fn pod_with_annotations(text: &str) -> Pod {
    let mut pod = Pod::default();
    pod.metadata.namespace = "default".into();
    pod.metadata.name = "pod".into();
    pod.metadata
        .annotations
        .insert(SIDECAR_STATUS.into(), "{}".into());
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            pod.metadata.annotations.insert(k.into(), v.into());
        }
    }
    pod
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::model::Container;

    fn conf() -> PluginConf {
        PluginConf::default()
    }

    #[test]
    fn pods_without_a_sidecar_or_in_excluded_namespaces_are_skipped() {
        let mut pod = Pod::default();
        pod.metadata.namespace = "default".into();
        assert!(matches!(decide(&pod, &conf()), Ok(Decision::Skip(_))));
        pod.spec.containers.push(Container {
            name: "skiff-proxy".into(),
        });
        assert!(matches!(decide(&pod, &conf()), Ok(Decision::Capture(_))));
        pod.metadata.namespace = "kube-system".into();
        assert!(matches!(decide(&pod, &conf()), Ok(Decision::Skip(r)) if r.contains("excluded")));
        pod.metadata.namespace = "default".into();
        pod.spec.init_containers.push(Container {
            name: "istio-init".into(),
        });
        assert!(matches!(decide(&pod, &conf()), Ok(Decision::Skip(r)) if r.contains("istio-init")));
        let pod = pod_with_annotations("sidecar.istio.io/inject=false");
        assert!(matches!(decide(&pod, &conf()), Ok(Decision::Skip(_))));
        let pod = pod_with_annotations("sidecar.istio.io/interceptionMode=NONE");
        assert!(matches!(decide(&pod, &conf()), Ok(Decision::Skip(_))));
    }

    #[test]
    fn annotations_override_the_node_defaults() {
        let pod = pod_with_annotations(
            "traffic.sidecar.istio.io/includeOutboundIPRanges=10.96.0.0/12\n\
             traffic.sidecar.istio.io/excludeInboundPorts=8081\n\
             traffic.sidecar.istio.io/excludeOutboundPorts=5432,6379\n\
             sidecar.istio.io/interceptionMode=TPROXY",
        );
        let Ok(Decision::Capture(c)) = decide(&pod, &conf()) else {
            panic!("captured");
        };
        let a = c.capture_args();
        assert_eq!(a.outbound_cidrs, "10.96.0.0/12");
        assert_eq!(a.inbound_exclude_ports, "8081,15020,15021,15090");
        assert_eq!(a.outbound_exclude_ports, "5432,6379");
        let args = c.iptables_args("/var/run/netns/p");
        assert!(args.windows(2).any(|w| w == ["-m", "TPROXY"]), "{args:?}");
        assert!(args.ends_with(&["--network-namespace".into(), "/var/run/netns/p".into()]));
    }

    #[test]
    fn a_bad_annotation_is_refused_by_name() {
        let pod =
            pod_with_annotations("traffic.sidecar.istio.io/excludeOutboundIPRanges=10.0.0.0/33");
        let e = decide(&pod, &conf()).expect_err("bad CIDR");
        assert_eq!(e.annotation, EXCLUDE_OUTBOUND_IP_RANGES, "{e}");
        let pod = pod_with_annotations("traffic.sidecar.istio.io/includeInboundPorts=http");
        let e = decide(&pod, &conf()).expect_err("bad port");
        assert_eq!(e.annotation, INCLUDE_INBOUND_PORTS, "{e}");
        let pod = pod_with_annotations("sidecar.istio.io/interceptionMode=tproxy");
        assert!(decide(&pod, &conf()).is_err());
    }
}
