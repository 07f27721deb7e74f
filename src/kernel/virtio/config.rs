// SPDX-License-Identifier: GPL-2.0

//! Typed access to a device's config space: each field is a type that says
//! where it is, how wide it is and in which byte order the spec lays it
//! out, and which feature makes it exist, so that no caller can read or
//! write past the config space (the modern PCI transport `BUG()`s on that,
//! the legacy and MMIO ones read other registers).
//!
//! # Examples
//!
//! A device type's fields, as its driver declares them:
//!
//! ```ignore
//! /// `struct virtio_net_config`'s `mtu`, present with `VIRTIO_NET_F_MTU`.
//! struct Mtu;
//! // SAFETY: offset 10, two bytes, with feature bit 3 (virtio spec 5.1.4).
//! unsafe impl ConfigField for Mtu {
//!     const OFFSET: u32 = 10;
//!     const NEEDS: u64 = 1 << 3;
//!     type Value = Virtio<u16>;
//! }
//!
//! let mtu: Option<u16> = dev.read_config::<Mtu>();
//! ```

use core::marker::PhantomData;

/// A field of a device type's config space.
///
/// # Safety
///
/// On every device of the type, bytes `OFFSET..OFFSET + Value::SIZE` of
/// the config space exist whenever the features in `NEEDS` are negotiated,
/// and hold a value laid out as `Value` says.
pub(crate) unsafe trait ConfigField {
    /// Byte offset in the config space.
    const OFFSET: u32;
    /// Feature bits that make the field exist (empty: always there).
    const NEEDS: u64;
    /// The field's width and byte order.
    type Value: ConfigValue;
}

/// How a config field's bytes make a value.
pub(crate) trait ConfigValue: private::Sealed {
    /// The value in the CPU's byte order.
    type Native: Copy;
    /// The field's width in bytes (1, 2, 4 or 8).
    const SIZE: usize;
    /// The value of the field's bytes (`bytes[..SIZE]`); `modern`: the
    /// device is a virtio 1.0 device (`VIRTIO_F_VERSION_1`).
    fn decode(bytes: [u8; 8], modern: bool) -> Self::Native;
    /// The field's bytes for `value`.
    fn encode(value: Self::Native, modern: bool) -> [u8; 8];
}

/// A little-endian field (`__le16`, `__le32`, `__le64` in the spec's
/// structures), whatever the device's version.
pub(crate) struct Le<T>(PhantomData<T>);

/// A field in the device's byte order (`__virtio16`, `__virtio32`,
/// `__virtio64`): little-endian on a 1.0 device, the guest's own order on
/// a legacy one.
#[allow(dead_code, reason = "no device this module drives has a field in its own byte order")]
pub(crate) struct Virtio<T>(PhantomData<T>);

mod private {
    pub(crate) trait Sealed {}
}

macro_rules! config_values {
    ($($t:ty),*) => {$(
        impl private::Sealed for Le<$t> {}
        impl ConfigValue for Le<$t> {
            type Native = $t;
            const SIZE: usize = core::mem::size_of::<$t>();
            fn decode(bytes: [u8; 8], _modern: bool) -> $t {
                let mut raw = [0u8; core::mem::size_of::<$t>()];
                raw.copy_from_slice(&bytes[..Self::SIZE]);
                <$t>::from_le_bytes(raw)
            }
            fn encode(value: $t, _modern: bool) -> [u8; 8] {
                let mut bytes = [0u8; 8];
                bytes[..Self::SIZE].copy_from_slice(&value.to_le_bytes());
                bytes
            }
        }

        impl private::Sealed for Virtio<$t> {}
        impl ConfigValue for Virtio<$t> {
            type Native = $t;
            const SIZE: usize = core::mem::size_of::<$t>();
            fn decode(bytes: [u8; 8], modern: bool) -> $t {
                let mut raw = [0u8; core::mem::size_of::<$t>()];
                raw.copy_from_slice(&bytes[..Self::SIZE]);
                if modern {
                    <$t>::from_le_bytes(raw)
                } else {
                    <$t>::from_ne_bytes(raw)
                }
            }
            fn encode(value: $t, modern: bool) -> [u8; 8] {
                let mut bytes = [0u8; 8];
                let raw = if modern { value.to_le_bytes() } else { value.to_ne_bytes() };
                bytes[..Self::SIZE].copy_from_slice(&raw);
                bytes
            }
        }
    )*};
}

config_values!(u16, u32, u64);

impl private::Sealed for u8 {}
impl ConfigValue for u8 {
    type Native = u8;
    const SIZE: usize = 1;
    fn decode(bytes: [u8; 8], _modern: bool) -> u8 {
        bytes[0]
    }
    fn encode(value: u8, _modern: bool) -> [u8; 8] {
        [value, 0, 0, 0, 0, 0, 0, 0]
    }
}
