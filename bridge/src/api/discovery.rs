//! The retained `{root}/capabilities/{name}` documents: which online devices offer a
//! capability and how many tasks each can take now, so an application can find where work of
//! a kind can run without reading every device's document.

use serde::Serialize;

/// The retained `{root}/capabilities/{name}` document. Published while at least one online
/// device offers the capability, cleared (an empty retained message) when none does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CapabilityDocument {
    pub capability: String,
    /// The online devices offering it, by id: all of them, or the [`MAX_LISTED`] with the
    /// most free slots when more offer it (so the document stays one modest MQTT message).
    pub devices: Vec<CapabilityDevice>,
    /// Free slots of all the online devices offering it, listed or not.
    pub free: u32,
    /// How many online devices offer it, listed or not.
    pub online: u32,
    /// Wall-clock milliseconds since the Unix epoch when the document was made.
    pub ts_ms: u64,
}

/// Most devices one capability document lists: about 20 KiB of JSON, well below the
/// smallest MQTT packet limit the bridge accepts beyond its default (256 KiB).
pub const MAX_LISTED: usize = 256;

/// One device in a [`CapabilityDocument`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CapabilityDevice {
    pub device_id: String,
    /// Tasks it can be given now (its free slots, as its link last reported them, less the
    /// tasks sent since). Of them, `reserved` only urgent tasks may take.
    pub free: u32,
    /// Tasks on it now.
    pub in_flight: u32,
    /// Of its free slots, how many only urgent tasks may take (its reserve, less what urgent
    /// tasks on it hold already).
    pub reserved: u32,
    pub slots: u8,
}

impl CapabilityDocument {
    /// The JSON text published.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("documents serialise to JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_json() {
        let doc = CapabilityDocument {
            capability: "sensor.read".into(),
            devices: vec![CapabilityDevice {
                device_id: "dev-a".into(),
                free: 1,
                in_flight: 1,
                reserved: 0,
                slots: 2,
            }],
            free: 1,
            online: 1,
            ts_ms: 7,
        };
        assert_eq!(
            doc.to_json(),
            r#"{"capability":"sensor.read","devices":[{"device_id":"dev-a","free":1,"in_flight":1,"reserved":0,"slots":2}],"free":1,"online":1,"ts_ms":7}"#
        );
    }
}
