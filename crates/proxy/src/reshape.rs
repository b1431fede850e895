//! Making the messages of streams whose messages depend on each other self-contained, so
//! they can be batched and mixed with other clients' messages like any other report.
//!
//! OAP reads some facts from the first message of each stream only: the service, instance
//! and timestamp of a meter `collect` stream, Envoy's node identifier. Once the proxy splits
//! streams into batches and merges batches of many clients, "the first message" is another
//! one, so those facts are carried into the messages themselves.

use bytes::{Bytes, BytesMut};

use crate::wire::{self, WireError};

/// The `MeterData` messages of one `MeterReportService/collect` stream, turned into
/// `MeterDataCollection` messages for `collectBatch` (where each message is one set).
#[derive(Debug)]
pub struct MeterSet {
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

/// The messages of one Envoy stream (access logs or metrics): the identifier of the first
/// message is written into every later message that lacks it.
#[derive(Debug, Default)]
pub struct Identified {
    /// The identifier field as encoded, shared by the stream's events.
    origin: Option<Bytes>,
}

impl Identified {
    /// The message to queue and the sender it comes from (`None` until a message named it).
    pub fn message(&mut self, message: Bytes) -> Result<(Bytes, Option<Bytes>), WireError> {
        if wire::has_field(&message, wire::ENVOY_IDENTIFIER)? {
            let origin = Bytes::from(wire::encoded_fields(&message, &[wire::ENVOY_IDENTIFIER])?);
            self.origin = Some(origin.clone());
            return Ok((message, Some(origin)));
        }
        match &self.origin {
            Some(origin) => {
                let mut with = BytesMut::with_capacity(origin.len() + message.len());
                with.extend_from_slice(origin);
                with.extend_from_slice(&message);
                Ok((with.freeze(), Some(origin.clone())))
            }
            None => Ok((message, None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tests::{message, meter_data};

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
    fn envoy_messages_after_the_first_get_its_identifier() {
        let identifier = message(&[(1, b"node-a")]);
        let first = Bytes::from(message(&[(1, &identifier), (2, b"log 1")]));
        let later = Bytes::from(message(&[(2, b"log 2")]));
        let mut stream = Identified::default();
        let (queued_first, origin) = stream.message(first.clone()).unwrap();
        assert_eq!(queued_first, first, "the first message is kept as it is");
        let origin = origin.unwrap();
        let (queued_later, later_origin) = stream.message(later).unwrap();
        assert_eq!(later_origin.as_ref(), Some(&origin));
        assert_eq!(
            wire::first_message(&queued_later, 1).unwrap(),
            Some(&identifier[..])
        );
        assert_eq!(
            wire::first_message(&queued_later, 2).unwrap(),
            Some(&b"log 2"[..])
        );

        // A stream that never names its sender is passed on as it is.
        let mut anonymous = Identified::default();
        let bare = Bytes::from(message(&[(2, b"log")]));
        assert_eq!(anonymous.message(bare.clone()).unwrap(), (bare, None));
    }
}
