//! The ConfigStore as the xDS streams' consumer: responses applied to the subscriptions they
//! feed (listeners and clusters resource by resource, as Envoy's LDS and CDS), verdicts sent
//! back for the ACK or NACK, and the streams told which names each type needs.

use super::*;

impl ConfigStore {
    /// Decodes discovery responses in this process rather than in skiff's helper (for
    /// executables that are not skiff: fuzzers, tools).
    pub fn decode_in_process(&mut self) {
        self.decoder = crate::config::discovery::Decoder::in_process();
    }

    /// The responses of the xDS streams, for the main loop to hand to [`Self::on_xds`] (once).
    pub fn take_xds_events(&mut self) -> Option<mpsc::UnboundedReceiver<XdsEvent>> {
        self.xds_rx.take()
    }

    /// A response from an xDS stream: checked, applied to every subscription it feeds, and
    /// answered with the verdict (ACK, or one NACK with every rejection's message).
    pub fn on_xds(&mut self, ev: XdsEvent) {
        let verdict = self.apply_xds(&ev.stream, &ev.type_url, ev.update);
        self.sync_eds();
        self.sync_rds();
        self.sync_sds();
        self.promote();
        // Before the verdict, so that a CDS answer the warming clusters hold back is held.
        self.sync_pause();
        let _ = ev.verdict.send(verdict);
        self.publish();
    }

    /// As Envoy's cluster manager: once the first clusters are initialized, the CDS answers on
    /// ADS are held back while any cluster warms (so a control plane can sequence CDS and
    /// EDS or SDS), and go out when none does.
    pub(super) fn sync_pause(&mut self) {
        let cds_on_ads = self
            .cds
            .as_ref()
            .is_some_and(|s| matches!(s.source.kind, SourceKind::Ads));
        let warming = self.clusters.values().any(|s| s.warming.is_some());
        let pause = cds_on_ads && self.lds_asked && warming;
        self.paused.send_if_modified(|set| {
            if pause {
                set.insert(type_url::CLUSTER)
            } else {
                set.remove(type_url::CLUSTER)
            }
        });
    }

    /// Applies one xDS response; the error is the NACK's message.
    pub(super) fn apply_xds(
        &mut self,
        stream: &StreamKey,
        url: &str,
        update: Update,
    ) -> Result<(), String> {
        let response = |version_info, resources| {
            envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse {
                version_info,
                resources,
                ..Default::default()
            }
        };
        let (d, removed) = match update {
            Update::Sotw {
                version_info,
                resources,
            } => (self.decoder.check(response(version_info, resources)), None),
            Update::Delta {
                system_version_info,
                resources,
                removed,
            } => {
                let (versions, anys) = resources.into_iter().map(|(_, v, a)| (v, a)).unzip();
                let mut d = self.decoder.check(response(system_version_info, anys));
                d.versions = versions;
                (d, Some(removed))
            }
            // A REST answer, decoded by the helper (which holds the descriptors): JSON that is
            // not a discovery response is rejected as a whole, as Envoy rejects it.
            Update::Json(text) => match self.decoder.check_json(&text) {
                Ok(d) => (d, None),
                Err(e) => return self.reject_rest_answer(stream, url, e),
            },
        };
        let fed_by = |s: &Subscription| stream_feeds(stream, &s.source);
        match url {
            type_url::LISTENER | type_url::CLUSTER => {
                let (kind, sub) = if url == type_url::LISTENER {
                    (Kind::Lds, self.lds.as_ref())
                } else {
                    (Kind::Cds, self.cds.as_ref())
                };
                let Some(src) = sub.filter(|s| fed_by(s)).map(|s| s.source.clone()) else {
                    return Ok(());
                };
                self.deliver(kind, &src, &Ok(d), removed.as_deref())
            }
            // Wildcard: every SRDS subscription this stream feeds gets the whole response.
            type_url::SCOPED_ROUTE => {
                let fed: Vec<(String, ConfigSource)> = self
                    .srds
                    .iter()
                    .filter(|(_, s)| fed_by(&s.sub))
                    .map(|(n, s)| (n.clone(), s.sub.source.clone()))
                    .collect();
                // Checked for every subscription before any applies it: a response one of
                // them rejects changes none (each counts the rejection).
                let rejected = fed
                    .iter()
                    .find_map(|(name, _)| self.srds_next(name, &d, removed.as_deref()).err());
                let update = match rejected {
                    Some(e) => Err(FileError::Rejected(e)),
                    None => Ok(d),
                };
                let each = fed.into_iter().map(|(n, src)| (Kind::Srds(n), src));
                self.deliver_each(each.collect(), &update, removed.as_deref())
            }
            type_url::ROUTE | type_url::ENDPOINT | type_url::SECRET | type_url::RUNTIME => {
                // State of the world: an RTDS resource left out is removed (Envoy empties the
                // layer).
                let removed = match removed {
                    Some(r) => r,
                    None if url == type_url::RUNTIME => self.rtds_left_out(stream, &d),
                    None => Vec::new(),
                };
                self.apply_named(stream, url, d, removed)
            }
            other => Err(format!("unexpected type URL '{other}'")),
        }
    }

    /// The RTDS resources this stream feeds that a state-of-the-world response leaves out.
    fn rtds_left_out(&self, stream: &StreamKey, d: &Discovery) -> Vec<String> {
        let named: BTreeSet<String> = d
            .resources
            .iter()
            .enumerate()
            .filter_map(|(i, a)| {
                resource_name(type_url::RUNTIME, a, &format!("resources[{i}]")).ok()
            })
            .collect();
        self.rtds
            .iter()
            .filter(|(n, s)| {
                let own = match stream {
                    StreamKey::Api(_, _, own) if !own.is_empty() => own == *n,
                    _ => true,
                };
                own && stream_feeds(stream, &s.source) && !named.contains(*n)
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// A REST answer that is not a discovery response: counted as rejected by the
    /// subscription it was polled for.
    fn reject_rest_answer(
        &mut self,
        stream: &StreamKey,
        url: &str,
        e: FileError,
    ) -> Result<(), String> {
        let StreamKey::Api(source, _, name) = stream else {
            return Err(e.to_string());
        };
        let kinds = match url {
            type_url::LISTENER => vec![Kind::Lds],
            type_url::CLUSTER => vec![Kind::Cds],
            type_url::ROUTE => vec![Kind::Rds(name.clone())],
            type_url::ENDPOINT => vec![Kind::Eds(name.clone())],
            type_url::RUNTIME => vec![Kind::Rtds(name.clone())],
            // Wildcard: every SRDS subscription the poll feeds.
            type_url::SCOPED_ROUTE => self
                .srds
                .iter()
                .filter(|(_, s)| stream_feeds(stream, &s.sub.source))
                .map(|(n, _)| Kind::Srds(n.clone()))
                .collect(),
            _ => vec![Kind::Sds(name.clone())],
        };
        let src = ConfigSource {
            kind: SourceKind::Grpc(source.clone()),
            initial_fetch_timeout: None,
        };
        let rejected = Err(match e {
            FileError::Read(m) => FileError::Rejected(ConfigError::new("", m)),
            r => r,
        });
        let each = kinds.into_iter().map(|k| (k, src.clone())).collect();
        self.deliver_each(each, &rejected, None)
    }

    /// One update to several subscriptions (SRDS's wildcard): each counts it; their errors,
    /// once each.
    fn deliver_each(
        &mut self,
        each: Vec<(Kind, ConfigSource)>,
        update: &Result<Discovery, FileError>,
        removed: Option<&[String]>,
    ) -> Result<(), String> {
        let mut errors = Vec::new();
        for (kind, src) in each {
            if let Err(e) = self.deliver(kind, &src, update, removed) {
                errors.push(e);
            }
        }
        errors.dedup();
        match errors.is_empty() {
            true => Ok(()),
            false => Err(errors.join("\n")),
        }
    }

    /// An RDS, EDS or SDS response: each resource goes to the subscription of its name (a
    /// name nothing subscribes to is ignored, as Envoy does); in delta, a removed endpoint
    /// assignment leaves its cluster without hosts.
    fn apply_named(
        &mut self,
        stream: &StreamKey,
        url: &str,
        d: Discovery,
        removed: Vec<String>,
    ) -> Result<(), String> {
        if !d.unknown_fields.is_empty() {
            for f in &d.unknown_fields {
                tracing::warn!(field = %f, "unknown field ignored");
            }
            self.main.counter("server.dynamic_unknown_fields").inc();
        }
        let mut errors = Vec::new();
        let mut by_name: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, any) in d.resources.iter().enumerate() {
            match resource_name(url, any, &format!("resources[{i}]")) {
                Ok(n) => by_name.entry(n).or_default().push(i),
                Err(e) => errors.push(e.to_string()),
            }
        }
        let kind_of = |name: String| match url {
            type_url::ROUTE => Kind::Rds(name),
            type_url::ENDPOINT => Kind::Eds(name),
            type_url::RUNTIME => Kind::Rtds(name),
            _ => Kind::Sds(name),
        };
        let mut failed = BTreeSet::new();
        for (name, idx) in by_name {
            let kind = kind_of(name.clone());
            let Some(src) = self
                .subscription(&kind)
                .filter(|s| stream_feeds(stream, &s.source))
                .map(|s| s.source.clone())
            else {
                tracing::debug!(resource = %name, "xDS: ignoring a resource nothing subscribes to");
                continue;
            };
            let version = match idx.first() {
                Some(i) if !d.versions.is_empty() => d.version_of(*i).to_string(),
                _ => d.version_info.clone(),
            };
            let one = match idx.iter().find_map(|i| d.errors.get(i)) {
                Some(e) => Err(FileError::Rejected(e.clone())),
                None => Ok(Discovery {
                    version_info: version,
                    resources: idx
                        .iter()
                        .filter_map(|i| d.resources.get(*i).cloned())
                        .collect(),
                    dumps: idx
                        .iter()
                        .filter_map(|i| d.dumps.get(*i).cloned())
                        .collect(),
                    ..Default::default()
                }),
            };
            if let Err(e) = self.deliver(kind, &src, &one, None) {
                errors.push(e);
                failed.insert(name);
            }
        }
        if !errors.is_empty() {
            // As Envoy's mux: a rejected response is a failed update for every subscription
            // of its type on this stream, those whose own resource applied included.
            let names: Vec<String> = match url {
                type_url::ROUTE => self.rds.keys().cloned().collect(),
                type_url::ENDPOINT => self.eds.keys().cloned().collect(),
                type_url::RUNTIME => self.rtds.keys().cloned().collect(),
                _ => self.secrets.keys().cloned().collect(),
            };
            // A per-type stream of one name (skiff opens one per resource) feeds that name only.
            let on_stream = |n: &String| match stream {
                StreamKey::Api(_, _, own) if !own.is_empty() => own == n,
                _ => true,
            };
            for name in names
                .into_iter()
                .filter(|n| !failed.contains(n) && on_stream(n))
            {
                let kind = kind_of(name);
                if let Some(scope) = self
                    .subscription(&kind)
                    .filter(|s| stream_feeds(stream, &s.source))
                    .map(|s| s.scope.clone())
                {
                    self.main.counter(&format!("{scope}update_rejected")).inc();
                }
            }
        }
        if url == type_url::ENDPOINT || url == type_url::RUNTIME {
            for name in removed {
                let kind = if url == type_url::RUNTIME {
                    Kind::Rtds(name)
                } else {
                    Kind::Eds(name)
                };
                let Some(src) = self
                    .subscription(&kind)
                    .filter(|s| stream_feeds(stream, &s.source))
                    .map(|s| s.source.clone())
                else {
                    continue;
                };
                let empty = Ok(Discovery {
                    version_info: d.version_info.clone(),
                    ..Default::default()
                });
                if let Err(e) = self.deliver(kind, &src, &empty, None) {
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }

    /// Starts the xDS streams the subscriptions need and tells each the names it now wants:
    /// every listener and cluster (wildcard), and the route configurations, endpoint
    /// assignments and secrets that listeners and clusters name. Listeners are asked for once
    /// the first round of clusters is warm, as Envoy's init manager does.
    pub(super) fn sync_xds(&mut self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        // The stream of a subscription, and the scope of its stats when it has one of its own.
        let key_of = |sub: &Subscription, t: &'static str, name: &str| match &sub.source.kind {
            SourceKind::Ads => Some(((StreamKey::Ads, t), "control_plane.".to_string())),
            // A REST source counts its failed polls in the subscription's own stats.
            SourceKind::Grpc(g) if g.rest.is_some() => Some((
                (StreamKey::Api(g.clone(), t, name.to_string()), t),
                sub.scope.clone(),
            )),
            SourceKind::Grpc(g) => Some((
                (StreamKey::Api(g.clone(), t, name.to_string()), t),
                format!("{}control_plane.", sub.scope),
            )),
            SourceKind::File { .. } => None,
        };
        let mut want: BTreeMap<(StreamKey, &'static str), Interest> = BTreeMap::new();
        let mut scopes: BTreeMap<StreamKey, String> = BTreeMap::new();
        if let Some((k, scope)) = self
            .cds
            .as_ref()
            .and_then(|s| key_of(s, type_url::CLUSTER, ""))
        {
            scopes.insert(k.0.clone(), scope);
            want.insert(k, Interest::Wildcard);
        }
        if !self.lds_asked {
            let clusters_warming = self.cds.as_ref().is_some_and(|s| !s.ready)
                || self
                    .clusters
                    .values()
                    .any(|s| s.warming.is_some() && s.active.is_none());
            self.lds_asked = !clusters_warming;
            // As Envoy, the listeners' initial fetch timeout runs from when they are asked for.
            let asked = self.lds_asked;
            if let Some(lds) = self
                .lds
                .as_mut()
                .filter(|l| asked && !matches!(l.source.kind, SourceKind::File { .. }))
            {
                lds.created = Instant::now();
            }
        }
        if self.lds_asked {
            if let Some((k, scope)) = self
                .lds
                .as_ref()
                .and_then(|s| key_of(s, type_url::LISTENER, ""))
            {
                scopes.insert(k.0.clone(), scope);
                want.insert(k, Interest::Wildcard);
            }
        }
        for s in self.srds.values() {
            if let Some((k, scope)) = key_of(&s.sub, type_url::SCOPED_ROUTE, "") {
                scopes.entry(k.0.clone()).or_insert(scope);
                want.insert(k, Interest::Wildcard);
            }
        }
        let named = self
            .rds
            .iter()
            .map(|(n, r)| (n, &r.sub, type_url::ROUTE))
            .chain(
                self.eds
                    .iter()
                    .map(|(n, e)| (n, &e.sub, type_url::ENDPOINT)),
            )
            .chain(
                self.secrets
                    .iter()
                    .filter_map(|(n, s)| s.sub.as_ref().map(|sub| (n, sub, type_url::SECRET))),
            )
            .chain(self.rtds.iter().map(|(n, s)| (n, s, type_url::RUNTIME)));
        for (name, sub, t) in named {
            let Some((k, scope)) = key_of(sub, t, name) else {
                continue;
            };
            scopes.entry(k.0.clone()).or_insert(scope);
            if let Interest::Names(n) = want
                .entry(k)
                .or_insert_with(|| Interest::Names(BTreeSet::new()))
            {
                n.insert(name.clone());
            }
        }
        // A type asked for before and wanted no more is told so (no names).
        for k in self.interests.keys() {
            if !want.contains_key(k) {
                want.insert(k.clone(), Interest::Names(BTreeSet::new()));
            }
        }
        for ((key, t), interest) in &want {
            if self.interests.get(&(key.clone(), *t)) == Some(interest) {
                continue;
            }
            let scope = scopes.get(key).cloned().unwrap_or_default();
            let Some(stream) = self.stream(key, scope) else {
                continue;
            };
            stream.interest(t, interest.clone());
            self.interests.insert((key.clone(), *t), interest.clone());
        }
        // A per-type stream that nothing needs any more stops.
        let needed = |k: &StreamKey| {
            matches!(k, StreamKey::Ads)
                || want
                    .iter()
                    .any(|((kk, _), i)| kk == k && *i != Interest::Names(BTreeSet::new()))
        };
        self.streams.retain(|k, _| needed(k));
        let streams = &self.streams;
        self.interests.retain(|(k, _), _| streams.contains_key(k));
    }

    /// The stream for `key`, started on first use with its stats under `scope`.
    fn stream(&mut self, key: &StreamKey, scope: String) -> Option<&xds::Stream> {
        if !self.streams.contains_key(key) {
            let source = match key {
                StreamKey::Ads => match &self.ads {
                    Some(a) => a.clone(),
                    None => {
                        tracing::error!(
                            "a config source says 'ads' but the bootstrap has no ads_config"
                        );
                        return None;
                    }
                },
                StreamKey::Api(g, _, _) => g.clone(),
            };
            let peer = match &source.google {
                Some(g) => xds::Peer::google(g),
                None => {
                    let Some(target) = self.xds_targets.get(&source.cluster).cloned() else {
                        tracing::error!(cluster = %source.cluster, "xDS: no static cluster of that name with an endpoint");
                        return None;
                    };
                    xds::Peer::of(target, self.xds_clusters.get(&source.cluster).map(|c| &**c))
                }
            };
            let stream = xds::Stream::start(
                key.clone(),
                source,
                peer,
                (self.node.clone(), self.node_json.clone()),
                self.xds_tx.clone(),
                (self.main.clone(), scope),
                self.paused.subscribe(),
            );
            self.streams.insert(key.clone(), stream);
        }
        self.streams.get(key)
    }
}

/// Whether `stream` carries the resources of `source`.
fn stream_feeds(stream: &StreamKey, source: &ConfigSource) -> bool {
    match (stream, &source.kind) {
        (StreamKey::Ads, SourceKind::Ads) => true,
        (StreamKey::Api(g, _, _), SourceKind::Grpc(h)) => g == h,
        _ => false,
    }
}

/// The name of an RDS, EDS or SDS resource.
fn resource_name(url: &str, any: &Any, path: &str) -> Result<String, ConfigError> {
    Ok(match url {
        type_url::ROUTE => decode_any::<route_pb::RouteConfiguration>(any, url, path)?.name,
        type_url::ENDPOINT => {
            decode_any::<endpoint_pb::ClusterLoadAssignment>(any, url, path)?.cluster_name
        }
        type_url::RUNTIME => {
            decode_any::<envoy_types::pb::envoy::service::runtime::v3::Runtime>(any, url, path)?
                .name
        }
        _ => decode_any::<tls_pb::Secret>(any, url, path)?.name,
    })
}
