//! The gRPC codec of the project's services: prost messages, as `tonic_prost::ProstCodec`
//! encodes and decodes them, but decoded from one contiguous slice.
//!
//! tonic hands a decoder the message's bytes behind a `DecodeBuf` (a length over a `BytesMut`).
//! prost decoding from it goes through `BytesMut::advance` for every varint, tag and field it
//! reads; a request of a few entity keys and context values spends about a quarter of its decode
//! there. The bytes of one message are contiguous in practice, so the decoder reads them as a
//! `&[u8]`, where advancing is a pointer bump, and falls back to the buffer otherwise. The
//! messages decoded, and the errors, are those of `ProstCodec`.

use std::marker::PhantomData;

use prost::{Message, bytes::Buf};
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

/// Encodes `T` and decodes `U` (the generated clients and servers name it as their codec).
#[derive(Debug)]
pub struct SliceCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SliceCodec<T, U> {
    fn default() -> Self {
        SliceCodec(PhantomData)
    }
}

impl<T, U> Codec for SliceCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = SliceDecoder<U>;

    fn encoder(&mut self) -> ProstEncoder<T> {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> SliceDecoder<U> {
        SliceDecoder(PhantomData)
    }
}

/// Decodes a `U` from a message's bytes, read as one slice when they are contiguous.
#[derive(Debug)]
pub struct SliceDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for SliceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let len = buf.remaining();
        let decoded = if buf.chunk().len() == len {
            let decoded = U::decode(buf.chunk());
            buf.advance(len);
            decoded
        } else {
            U::decode(buf)
        };
        // As tonic_prost: a message that does not parse is INTERNAL (gRPC's status codes).
        decoded
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
