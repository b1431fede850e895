//! Connection control frames: SETTINGS, PING, WINDOW_UPDATE.

use std::time::Instant;

use super::*;
use crate::h2::frame::{self, Head, Reason, flag, setting};

impl Session {
    pub(super) fn on_ping(
        &mut self,
        head: Head,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), ConnectionError> {
        if head.stream != 0 {
            return Err(protocol_error("PING on a stream"));
        }
        let Ok(payload) = <[u8; 8]>::try_from(payload) else {
            return Err(frame_size_error("PING is not 8 bytes"));
        };
        if head.has(flag::ACK) {
            if payload == DRAIN_PING {
                self.final_goaway();
            }
            return Ok(());
        }
        if self.abuse.pings.count(now, MAX_CONTROL_FRAMES) {
            return Err(calm("ping_flood", "too many PINGs"));
        }
        frame::ping(payload, true, self.out());
        Ok(())
    }

    pub(super) fn on_settings(
        &mut self,
        head: Head,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), ConnectionError> {
        if head.stream != 0 {
            return Err(protocol_error("SETTINGS on a stream"));
        }
        if head.has(flag::ACK) {
            return if payload.is_empty() {
                Ok(())
            } else {
                Err(frame_size_error("SETTINGS ACK with a payload"))
            };
        }
        if self.abuse.settings.count(now, MAX_CONTROL_FRAMES) {
            return Err(calm("settings_flood", "too many SETTINGS"));
        }
        let Some(values) = frame::parse_settings(payload) else {
            return Err(frame_size_error("SETTINGS length is not a multiple of 6"));
        };
        for (id, value) in values {
            match id {
                setting::INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > frame::MAX_WINDOW {
                        return Err(ConnectionError::new(
                            Reason::FlowControl,
                            "protocol_error",
                            "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
                        ));
                    }
                    let delta = value - self.peer_initial_window;
                    self.peer_initial_window = value;
                    for stream in self.streams.values_mut() {
                        stream.send_window += delta;
                        if stream.send_window > frame::MAX_WINDOW {
                            return Err(ConnectionError::new(
                                Reason::FlowControl,
                                "protocol_error",
                                "a stream window above 2^31-1",
                            ));
                        }
                    }
                }
                setting::MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(protocol_error("SETTINGS_MAX_FRAME_SIZE out of range"));
                    }
                    self.peer_max_frame = value as usize;
                }
                setting::ENABLE_PUSH if value > 1 => {
                    return Err(protocol_error("SETTINGS_ENABLE_PUSH must be 0 or 1"));
                }
                _ => {}
            }
        }
        frame::settings_ack(self.out());
        // A larger initial window may free streams waiting for their own (this walk is
        // paid for by the SETTINGS flood limit).
        let opened: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, stream)| stream.blocked == Blocked::Stream && stream.send_window > 0)
            .map(|(id, _)| *id)
            .collect();
        for id in opened {
            self.write_stream(id);
        }
        self.retry_blocked();
        Ok(())
    }

    pub(super) fn on_window_update(
        &mut self,
        head: Head,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), ConnectionError> {
        let Ok(bytes) = <[u8; 4]>::try_from(payload) else {
            return Err(frame_size_error("WINDOW_UPDATE is not 4 bytes"));
        };
        if self.earned_updates > 0 {
            self.earned_updates -= 1;
        } else if self.abuse.window_updates.count(now, MAX_CONTROL_FRAMES) {
            return Err(calm(
                "window_update_flood",
                "too many WINDOW_UPDATEs for the data sent",
            ));
        }
        let increment = i64::from(u32::from_be_bytes(bytes) & 0x7fff_ffff);
        if head.stream == 0 {
            if increment == 0 {
                return Err(protocol_error("WINDOW_UPDATE of 0"));
            }
            self.send_window += increment;
            if self.send_window > frame::MAX_WINDOW {
                return Err(ConnectionError::new(
                    Reason::FlowControl,
                    "protocol_error",
                    "connection window above 2^31-1",
                ));
            }
            self.retry_blocked();
            return Ok(());
        }
        if head.stream > self.used_ids.highest() {
            return Err(protocol_error("WINDOW_UPDATE on an idle stream"));
        }
        let Some(stream) = self.streams.get_mut(&head.stream) else {
            // A closed stream: a WINDOW_UPDATE may cross the frame that closed it.
            return Ok(());
        };
        if increment == 0 {
            return self.stream_error(head.stream, Reason::Protocol);
        }
        stream.send_window += increment;
        if stream.send_window > frame::MAX_WINDOW {
            return self.stream_error(head.stream, Reason::FlowControl);
        }
        self.write_stream(head.stream);
        Ok(())
    }
}
