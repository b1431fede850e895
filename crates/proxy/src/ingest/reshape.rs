//! Making the messages of streams whose messages depend on each other self-contained, so
//! they can be batched and mixed with other clients' messages like any other report.
//!
//! OAP reads some facts once per stream and applies them to the stream's later messages:
//! the service, instance and timestamp of a meter `collect` stream, the service of a log
//! stream, Envoy's identifier, the node, task and connection of eBPF streams (see
//! [`crate::grpc::protocol::Shape`]). Once the proxy splits streams into batches and merges
//! batches of many clients, "the stream" is another one, so those facts are written into
//! the messages themselves, and each message is tagged with its *origin* (the fact as
//! encoded): messages of different origins never share an upstream stream.

use bytes::{Bytes, BytesMut};

use crate::grpc::protocol::Shape;
use crate::grpc::wire::{self, WireError};

/// The `MeterData` messages of one `MeterReportService/collect` stream, turned into
/// `MeterDataCollection` messages for `collectBatch` (where each message is one set).
#[derive(Debug)]
pub(crate) struct MeterSet {
    /// Service, instance and timestamp of the set, from its first message.
    header: Option<Vec<u8>>,
    collection: BytesMut,
    /// The largest collection built (the upstream's message limit).
    limit: usize,
}

impl MeterSet {
    pub fn new(limit: usize) -> Self {
        MeterSet {
            header: None,
            collection: BytesMut::new(),
            limit,
        }
    }

    /// Adds the stream's next `MeterData`. Returns a finished collection when this one did
    /// not fit the limit; the next collection then starts with the set's header written
    /// into its first `MeterData`, so it names its service and instance too.
    /// Bytes gathered for the collection being built.
    pub(crate) fn buffered(&self) -> usize {
        self.collection.len() + self.header.as_ref().map_or(0, Vec::len)
    }

    pub fn add(&mut self, meter_data: &[u8]) -> Result<Option<Bytes>, WireError> {
        let header = match &self.header {
            Some(header) => header,
            None => self.header.insert(wire::meter_set_header(meter_data)?),
        };
        let mut finished = None;
        let plain = wire::length_delimited_len(wire::COLLECTION_METER_DATA, meter_data.len());
        if !self.collection.is_empty() && self.collection.len() + plain > self.limit {
            finished = Some(self.collection.split().freeze());
        }
        if self.collection.is_empty() && finished.is_some() {
            wire::put_length_delimited(
                &mut self.collection,
                wire::COLLECTION_METER_DATA,
                &[header, meter_data],
            );
        } else {
            wire::put_length_delimited(
                &mut self.collection,
                wire::COLLECTION_METER_DATA,
                &[meter_data],
            );
        }
        Ok(finished)
    }

    /// The last collection, at the end of the stream (none for an empty stream).
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.collection.is_empty()).then(|| self.collection.split().freeze())
    }
}

/// The carried fact of one client stream, for the shapes that carry one.
#[derive(Debug)]
pub(crate) enum Carried {
    /// Logs: the first non-empty service, as its encoded field, and its text.
    FirstService(Option<(Bytes, String)>),
    /// Envoy: the first message's identifier field(s), as encoded (empty: it had none).
    FirstIdentifier(Option<Bytes>),
    /// eBPF: the metadata (node or task) in force and, for access logs, the connection.
    Latest {
        metadata_field: u64,
        context_field: Option<u64>,
        metadata: Option<Bytes>,
        context: Option<Bytes>,
    },
}

impl Carried {
    /// The carrier for `shape`, or `None` when its messages carry nothing.
    pub(crate) fn for_shape(shape: Shape) -> Option<Carried> {
        match shape {
            Shape::FirstService => Some(Carried::FirstService(None)),
            Shape::FirstIdentifier => Some(Carried::FirstIdentifier(None)),
            Shape::Latest { metadata, context } => Some(Carried::Latest {
                metadata_field: metadata,
                context_field: context,
                metadata: None,
                context: None,
            }),
            _ => None,
        }
    }

    /// The message to queue (with what OAP would have read from the stream written in)
    /// and its origin.
    pub fn message(&mut self, message: Bytes) -> Result<(Bytes, Option<Bytes>), WireError> {
        match self {
            // LogReportServiceGrpcHandler: the first non-empty service of the stream is
            // written into every later LogData, whatever service that one names.
            Carried::FirstService(stream) => {
                let own = wire::string_field(&message, wire::LOG_SERVICE)?.unwrap_or_default();
                match stream {
                    None if own.is_empty() => Ok((message, None)),
                    None => {
                        let mut encoded = BytesMut::new();
                        wire::put_length_delimited(
                            &mut encoded,
                            wire::LOG_SERVICE,
                            &[own.as_bytes()],
                        );
                        let encoded = encoded.freeze();
                        *stream = Some((encoded.clone(), own.to_string()));
                        Ok((message, Some(encoded)))
                    }
                    Some((encoded, service)) if own == service => {
                        Ok((message, Some(encoded.clone())))
                    }
                    // A string field's last occurrence wins: appended, it overrides.
                    Some((encoded, _)) => Ok((join(&message, encoded), Some(encoded.clone()))),
                }
            }
            // Envoy's handlers read the identifier of the first message only: later
            // messages get it, in place of any of their own.
            Carried::FirstIdentifier(first) => match first {
                None => {
                    let identifier = Bytes::from(wire::encoded_fields(&message, &[IDENTIFIER])?);
                    *first = Some(identifier.clone());
                    Ok((message, Some(identifier)))
                }
                Some(identifier) => {
                    let origin = Some(identifier.clone());
                    if wire::has_field(&message, IDENTIFIER)? {
                        let rest = wire::without_fields(&message, &[IDENTIFIER])?;
                        Ok((join(identifier, &rest), origin))
                    } else if identifier.is_empty() {
                        Ok((message, origin))
                    } else {
                        Ok((join(identifier, &message), origin))
                    }
                }
            },
            // eBPF handlers: `isFirst || hasX()` for the node or task, `hasConnection()`
            // for the connection. A message carrying its own keeps it; others get the one
            // in force. The origin also says whether a connection was in force, so logs
            // OAP would drop (no connection yet) never follow another stream's connection.
            Carried::Latest {
                metadata_field,
                context_field,
                metadata,
                context,
            } => {
                let mut prefix = BytesMut::new();
                if metadata.is_none() || wire::has_field(&message, *metadata_field)? {
                    *metadata = Some(Bytes::from(wire::encoded_fields(
                        &message,
                        &[*metadata_field],
                    )?));
                } else if let Some(carried) = metadata {
                    prefix.extend_from_slice(carried);
                }
                if let Some(field) = context_field {
                    if wire::has_field(&message, *field)? {
                        *context = Some(Bytes::from(wire::encoded_fields(&message, &[*field])?));
                    } else if let Some(carried) = context {
                        prefix.extend_from_slice(carried);
                    }
                }
                let mut origin = BytesMut::from(metadata.as_deref().unwrap_or_default());
                origin.extend_from_slice(&[u8::from(context.is_some())]);
                let queued = if prefix.is_empty() {
                    message
                } else {
                    join(&prefix, &message)
                };
                Ok((queued, Some(origin.freeze())))
            }
        }
    }
}

/// Envoy's StreamAccessLogsMessage and StreamMetricsMessage: identifier = 1.
const IDENTIFIER: u64 = 1;

fn join(first: &[u8], second: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(first.len() + second.len());
    out.extend_from_slice(first);
    out.extend_from_slice(second);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::wire::tests::{message, meter_data};

    fn collection_items(collection: &[u8]) -> Vec<Vec<u8>> {
        // A MeterDataCollection is field 1 repeated; split it back into its MeterData.
        let mut items = Vec::new();
        let mut rest = collection;
        while !rest.is_empty() {
            let item = wire::first_message(rest, 1).unwrap().unwrap().to_vec();
            let consumed = wire::length_delimited_len(1, item.len());
            items.push(item);
            rest = &rest[consumed..];
        }
        items
    }

    #[test]
    fn a_meter_stream_becomes_one_collection_in_order() {
        let first = meter_data("checkout", "pod-7");
        let second = message(&[(1, b"second value")]);
        let third = message(&[(1, b"third value")]);
        let mut set = MeterSet::new(1 << 20);
        for data in [&first, &second, &third] {
            assert_eq!(set.add(data).unwrap(), None);
        }
        let collection = set.finish().unwrap();
        assert_eq!(
            collection_items(&collection),
            vec![first.clone(), second, third]
        );
        assert_eq!(
            wire::meter_batch_key(&collection).unwrap().as_deref(),
            Some("checkout\0pod-7")
        );
        assert_eq!(set.finish(), None, "nothing is left behind");
        assert_eq!(MeterSet::new(1 << 20).finish(), None);
    }

    #[test]
    fn a_set_over_the_limit_is_split_and_every_part_names_the_instance() {
        let first = meter_data("checkout", "pod-7");
        let value = message(&[(1, &[b'v'; 40])]);
        let mut set = MeterSet::new(120);
        let mut collections = Vec::new();
        for data in std::iter::once(&first).chain(std::iter::repeat_n(&value, 6)) {
            collections.extend(set.add(data).unwrap());
        }
        collections.extend(set.finish());
        assert!(collections.len() > 1, "split into {}", collections.len());
        let mut values = 0;
        for collection in &collections {
            assert!(collection.len() <= 120 + first.len());
            assert_eq!(
                wire::meter_batch_key(collection).unwrap().as_deref(),
                Some("checkout\0pod-7"),
                "each part starts with the set's service and instance"
            );
            values += collection_items(collection).len();
        }
        assert_eq!(values, 7, "no MeterData lost or repeated");
    }

    #[test]
    fn envoy_messages_after_the_first_get_its_identifier_and_only_that_one() {
        let identifier = message(&[(1, b"node-a")]);
        let first = Bytes::from(message(&[(1, &identifier), (2, b"log 1")]));
        let later = Bytes::from(message(&[(2, b"log 2")]));
        let renamed = Bytes::from(message(&[(1, &message(&[(1, b"node-b")])), (2, b"log 3")]));
        let mut stream = Carried::for_shape(Shape::FirstIdentifier).unwrap();
        let (queued_first, origin) = stream.message(first.clone()).unwrap();
        assert_eq!(queued_first, first, "the first message is kept as it is");
        let origin = origin.unwrap();
        for (later, log) in [(later, &b"log 2"[..]), (renamed, b"log 3")] {
            let (queued, later_origin) = stream.message(later).unwrap();
            assert_eq!(later_origin.as_ref(), Some(&origin));
            assert_eq!(
                wire::encoded_fields(&queued, &[1]).unwrap(),
                origin.to_vec()
            );
            assert_eq!(wire::first_message(&queued, 2).unwrap(), Some(log));
        }

        // A stream whose first message names no sender: later identifiers are ignored by
        // OAP, so they are taken out.
        let mut anonymous = Carried::for_shape(Shape::FirstIdentifier).unwrap();
        let bare = Bytes::from(message(&[(2, b"log")]));
        assert_eq!(
            anonymous.message(bare.clone()).unwrap(),
            (bare.clone(), Some(Bytes::new()))
        );
        let named = Bytes::from(message(&[(1, &identifier), (2, b"log")]));
        assert_eq!(
            anonymous.message(named).unwrap(),
            (bare, Some(Bytes::new()))
        );
    }

    #[test]
    fn later_logs_get_the_streams_first_service() {
        let mut stream = Carried::for_shape(Shape::FirstService).unwrap();
        let before = Bytes::from(message(&[(3, b"pod-1")]));
        assert_eq!(
            stream.message(before.clone()).unwrap(),
            (before, None),
            "no service yet"
        );
        let first = Bytes::from(message(&[(2, b"checkout"), (3, b"pod-1")]));
        let (queued, origin) = stream.message(first.clone()).unwrap();
        assert_eq!(queued, first);
        let origin = origin.unwrap();
        for later in [
            message(&[(3, b"pod-1")]),
            message(&[(2, b"payment"), (3, b"pod-1")]),
        ] {
            let (queued, later_origin) = stream.message(Bytes::from(later)).unwrap();
            assert_eq!(later_origin.as_ref(), Some(&origin));
            assert_eq!(wire::string_field(&queued, 2).unwrap(), Some("checkout"));
        }
        // The same service again: nothing to write.
        let same = Bytes::from(message(&[(2, b"checkout")]));
        assert_eq!(stream.message(same.clone()).unwrap().0, same);
    }

    #[test]
    fn ebpf_messages_carry_the_node_and_connection_in_force() {
        let mut stream = Carried::for_shape(Shape::Latest {
            metadata: 1,
            context: Some(2),
        })
        .unwrap();
        let node = |name: &[u8]| message(&[(1, name)]);
        let connection = |c: &[u8]| message(&[(2, c)]);
        let logs = message(&[(3, b"kernel")]);
        // Node only: no connection yet, an origin of its own.
        let (_, without) = stream.message(Bytes::from(node(b"n1"))).unwrap();
        let (queued, with) = stream
            .message(Bytes::from([connection(b"c1"), logs.clone()].concat()))
            .unwrap();
        assert_ne!(without, with, "logs OAP would drop keep apart");
        assert_eq!(wire::first_message(&queued, 1).unwrap(), Some(&b"n1"[..]));
        let (queued, same) = stream.message(Bytes::from(logs.clone())).unwrap();
        assert_eq!(same, with);
        assert_eq!(wire::first_message(&queued, 1).unwrap(), Some(&b"n1"[..]));
        assert_eq!(wire::first_message(&queued, 2).unwrap(), Some(&b"c1"[..]));
        // A new node: a new origin, carried on.
        let (_, updated) = stream.message(Bytes::from(node(b"n2"))).unwrap();
        assert_ne!(updated, with);
        let (queued, _) = stream.message(Bytes::from(logs)).unwrap();
        assert_eq!(wire::first_message(&queued, 1).unwrap(), Some(&b"n2"[..]));
        assert_eq!(wire::first_message(&queued, 2).unwrap(), Some(&b"c1"[..]));
    }
}
